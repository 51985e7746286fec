//! The opcode interpreter behind [`super::load`]: builds values in an arena, never calls
//! anything but the whitelisted constructors in [`Vm::call`].

use super::{Global, Object, StorageRef, TensorRef, MAX_DEPTH};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::rc::Rc;

mod calls;

/// See [`super::load`].
pub(super) fn load(data: &[u8], what: &str) -> Result<Object> {
    let mut vm = Vm {
        data,
        pos: 0,
        op_pos: 0,
        what,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        heap: Vec::new(),
    };
    let root = vm.run()?;
    // Without shared references a pickle yields at most one node and one copied byte per byte
    // of input; sharing (memo gets) may legitimately repeat small objects, not the graph.
    let mut budget = 4 * data.len() + 1024;
    vm.to_object(&root, 0, &mut budget)
}

/// A value on the VM stack. Containers are indices into the arena, so copies share them (Python
/// reference semantics) and nothing is ever dropped recursively.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Global(Global),
    Node(usize),
}

#[derive(Debug)]
enum Node {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Storage(StorageRef),
    Tensor(TensorRef),
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    what: &'a str,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    heap: Vec<Node>,
}

const CORRUPT_HINT: &str =
    "the file is truncated or was not written by torch.save; re-create it with torch.save";

impl<'a> Vm<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::bad_input(format!(
            "{}: {} (pickle byte {})",
            self.what, msg, self.op_pos
        ))
        .with_hint(CORRUPT_HINT)
    }

    fn refuse(&self, module: &str, name: &str) -> Error {
        Error::bad_input(format!(
            "{}: refusing to load '{}.{}' (not a tensor or dict; shardquant never executes \
             pickled code) (pickle byte {})",
            self.what, module, name, self.op_pos
        ))
        .with_hint(
            "save the statistics as a plain dict of tensors (torch.save({name: tensor}, path)), \
             or convert them to a .stats.safetensors file",
        )
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(self.err(format!(
                "opcode needs {} bytes but only {} remain",
                n,
                self.data.len() - self.pos
            )));
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn le(&mut self, n: usize) -> Result<u64> {
        let b = self.take(n)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    /// A length prefix of `n` bytes, checked against what is left (nothing allocated yet).
    fn len_prefix(&mut self, n: usize) -> Result<usize> {
        let len = self.le(n)?;
        let left = (self.data.len() - self.pos) as u64;
        if len > left {
            return Err(self.err(format!(
                "declared length {len} exceeds the {left} bytes left"
            )));
        }
        Ok(len as usize)
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.err("unterminated text argument"));
        };
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| self.err("text argument is not UTF-8"))
    }

    fn utf8(&self, b: &[u8]) -> Result<Value> {
        let s = std::str::from_utf8(b).map_err(|_| self.err("string is not valid UTF-8"))?;
        Ok(Value::Str(Rc::from(s)))
    }

    /// Pops the top value. As in CPython, a MARK hides what lies below it.
    fn pop(&mut self) -> Result<Value> {
        self.top()?;
        Ok(self.stack.pop().expect("checked by top"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let Some(m) = self.marks.pop() else {
            return Err(self.err("MARK expected"));
        };
        Ok(self.stack.split_off(m))
    }

    fn top(&self) -> Result<&Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.last() {
            Some(v) if self.stack.len() > floor => Ok(v),
            _ => Err(self.err("stack underflow")),
        }
    }

    fn alloc(&mut self, node: Node) -> Value {
        self.heap.push(node);
        Value::Node(self.heap.len() - 1)
    }

    fn put(&mut self, idx: u64) -> Result<()> {
        let idx = u32::try_from(idx).map_err(|_| self.err("memo index out of range"))?;
        let v = self.top()?.clone();
        self.memo.insert(idx, v);
        Ok(())
    }

    fn get(&mut self, idx: u64) -> Result<()> {
        let v = u32::try_from(idx)
            .ok()
            .and_then(|i| self.memo.get(&i).cloned());
        let v = v.ok_or_else(|| self.err(format!("memo index {idx} was never stored")))?;
        self.stack.push(v);
        Ok(())
    }

    fn global(&self, module: &str, name: &str) -> Result<Value> {
        let module = match module {
            "__builtin__" => "builtins",
            "copy_reg" => "copyreg",
            m => m,
        };
        Global::lookup(module, name)
            .map(Value::Global)
            .ok_or_else(|| self.refuse(module, name))
    }

    /// Adds items to the list or dict on top of the stack (below them).
    fn extend(&mut self, items: Vec<Value>, pairs: bool) -> Result<()> {
        let Value::Node(id) = *self.top()? else {
            return Err(self.err("items added to something that is not a list or dict"));
        };
        match (&mut self.heap[id], pairs) {
            (Node::List(l), false) => l.extend(items),
            (Node::Dict(d), true) if items.len().is_multiple_of(2) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
            }
            _ => return Err(self.err("items added to something that is not a list or dict")),
        }
        Ok(())
    }

    /// A little-endian two's-complement integer of any length (LONG1/LONG4) that fits in i64.
    fn int_long(&self, b: &[u8]) -> Result<i64> {
        let Some(&last) = b.last() else {
            return Ok(0);
        };
        let neg = last & 0x80 != 0;
        let fill = if neg { 0xff } else { 0 };
        let mut buf = [fill; 8];
        let n = b.len().min(8);
        buf[..n].copy_from_slice(&b[..n]);
        let v = i64::from_le_bytes(buf);
        if b.len() > 8 && (b[8..].iter().any(|&x| x != fill) || (v < 0) != neg) {
            return Err(self.err("integer does not fit in 64 bits"));
        }
        Ok(v)
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_pos = self.pos;
            let Some(&op) = self.data.get(self.pos) else {
                return Err(self.err("pickle ends without a STOP opcode"));
            };
            self.pos += 1;
            match op {
                0x80 => {
                    let proto = self.le(1)?;
                    if proto > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.le(8)?; // FRAME: a length hint only
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.le(4)? as u32 as i32;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.le(1)?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.le(2)?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a | 0x8b => {
                    let n = self.len_prefix(if op == 0x8a { 1 } else { 4 })?;
                    let b = self.take(n)?;
                    let v = self.int_long(b)?;
                    self.stack.push(Value::Int(v));
                }
                b'I' | b'L' => {
                    let t = self.line()?.trim_end_matches('L').to_string();
                    let v = match t.as_str() {
                        "00" if op == b'I' => Value::Bool(false),
                        "01" if op == b'I' => Value::Bool(true),
                        _ => Value::Int(t.parse().map_err(|_| self.err("bad integer literal"))?),
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let v = f64::from_bits(self.le(8)?.swap_bytes());
                    self.stack.push(Value::Float(v));
                }
                b'F' => {
                    let t = self.line()?;
                    let v = t.parse().map_err(|_| self.err("bad float literal"))?;
                    self.stack.push(Value::Float(v));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = self.len_prefix(match op {
                        b'X' => 4,
                        0x8c => 1,
                        _ => 8,
                    })?;
                    let b = self.take(n)?;
                    let v = self.utf8(b)?;
                    self.stack.push(v);
                }
                b'B' | b'C' | 0x8e | 0x96 | b'T' | b'U' => {
                    let n = self.len_prefix(match op {
                        b'C' | b'U' => 1,
                        b'B' | b'T' => 4,
                        _ => 8,
                    })?;
                    let b: Rc<[u8]> = Rc::from(self.take(n)?);
                    self.stack.push(Value::Bytes(b));
                }
                b')' => {
                    let v = self.alloc(Node::Tuple(Vec::new()));
                    self.stack.push(v);
                }
                b't' | 0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Node::Tuple(items));
                    self.stack.push(v);
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.alloc(Node::Tuple(items));
                    self.stack.push(v);
                }
                b']' | 0x8f => {
                    let v = self.alloc(Node::List(Vec::new()));
                    self.stack.push(v);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Node::List(items));
                    self.stack.push(v);
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend(vec![v], false)?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend(items, false)?;
                }
                b'}' => {
                    let v = self.alloc(Node::Dict(Vec::new()));
                    self.stack.push(v);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(self.err("DICT with an odd number of items"));
                    }
                    let v = self.alloc(Node::Dict(Vec::new()));
                    self.stack.push(v);
                    self.extend(items, true)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend(vec![k, v], true)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend(items, true)?;
                }
                b'p' => {
                    let idx = self
                        .line()?
                        .parse()
                        .map_err(|_| self.err("bad memo index"))?;
                    self.put(idx)?;
                }
                b'q' | b'r' => {
                    let idx = self.le(if op == b'q' { 1 } else { 4 })?;
                    self.put(idx)?;
                }
                0x94 => {
                    let idx = self.memo.len() as u64;
                    self.put(idx)?;
                }
                b'g' => {
                    let idx = self
                        .line()?
                        .parse()
                        .map_err(|_| self.err("bad memo index"))?;
                    self.get(idx)?;
                }
                b'h' | b'j' => {
                    let idx = self.le(if op == b'h' { 1 } else { 4 })?;
                    self.get(idx)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let v = self.global(module, name)?;
                    self.stack.push(v);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(m), Value::Str(n)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let v = self.global(&m, &n)?;
                    self.stack.push(v);
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(f, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let _state = self.pop()?;
                    match self.top()? {
                        Value::Node(id) if matches!(self.heap[*id], Node::Dict(_)) => {}
                        Value::Node(id) if matches!(self.heap[*id], Node::Tensor(_)) => {}
                        _ => return Err(self.err("BUILD (setting object state) on a non-dict")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                _ => return Err(self.unsupported(op)),
            }
        }
    }

    fn unsupported(&self, op: u8) -> Error {
        let what = match op {
            b'i' | b'o' | 0x92 => "object instantiation (INST/OBJ/NEWOBJ_EX)",
            0x82..=0x84 => "the extension registry (EXT1/2/4)",
            0x97 | 0x98 => "out-of-band buffers",
            b'P' => "text persistent ids",
            b'S' | b'V' => "protocol-0 quoted strings",
            _ => "",
        };
        let shown = if op.is_ascii_graphic() {
            format!(" ('{}')", op as char)
        } else {
            String::new()
        };
        if what.is_empty() {
            self.err(format!("unknown pickle opcode 0x{op:02x}{shown}"))
        } else {
            self.err(format!(
                "unsupported pickle opcode 0x{op:02x}{shown}: {what}"
            ))
        }
    }

    /// Copies a value out of the arena into an owned tree, bounded in depth and total size.
    fn to_object(&self, v: &Value, depth: usize, budget: &mut usize) -> Result<Object> {
        // Cost: one per node plus the bytes it copies, so shared references (memo gets) can
        // neither multiply nodes nor copy one long string many times over.
        let cost = 1 + match v {
            Value::Str(s) => s.len(),
            Value::Bytes(b) => b.len(),
            Value::Node(id) => match &self.heap[*id] {
                Node::Storage(s) => s.key.len() + s.location.len(),
                Node::Tensor(t) => {
                    t.storage.key.len() + t.storage.location.len() + 2 * t.shape.len()
                }
                _ => 0,
            },
            _ => 0,
        };
        if *budget < cost {
            return Err(self.err(
                "object graph expands to more than the pickle could hold \
                 (shared references used to blow it up)",
            ));
        }
        *budget -= cost;
        let id = match v {
            Value::None => return Ok(Object::None),
            Value::Bool(b) => return Ok(Object::Bool(*b)),
            Value::Int(i) => return Ok(Object::Int(*i)),
            Value::Float(f) => return Ok(Object::Float(*f)),
            Value::Str(s) => return Ok(Object::Str(s.to_string())),
            Value::Bytes(b) => return Ok(Object::Bytes(b.to_vec())),
            Value::Global(g) => return Ok(Object::Global(*g)),
            Value::Node(id) => *id,
        };
        if depth >= MAX_DEPTH {
            return Err(self.err(format!(
                "containers nested deeper than {MAX_DEPTH} levels (or a self-reference)"
            )));
        }
        let seq = |items: &[Value], budget: &mut usize| -> Result<Vec<Object>> {
            items
                .iter()
                .map(|x| self.to_object(x, depth + 1, budget))
                .collect()
        };
        Ok(match &self.heap[id] {
            Node::Tuple(items) => Object::Tuple(seq(items, budget)?),
            Node::List(items) => Object::List(seq(items, budget)?),
            Node::Storage(s) => Object::Storage(s.clone()),
            Node::Tensor(t) => Object::Tensor(t.clone()),
            Node::Dict(pairs) => {
                let mut out: Vec<(Object, Object)> = Vec::with_capacity(pairs.len());
                let mut seen: HashMap<String, usize> = HashMap::new();
                for (k, v) in pairs {
                    let k = self.to_object(k, depth + 1, budget)?;
                    let v = self.to_object(v, depth + 1, budget)?;
                    if let Object::Str(s) = &k {
                        if let Some(&i) = seen.get(s) {
                            out[i].1 = v;
                            continue;
                        }
                        seen.insert(s.clone(), out.len());
                    }
                    out.push((k, v));
                }
                Object::Dict(out)
            }
        })
    }
}
