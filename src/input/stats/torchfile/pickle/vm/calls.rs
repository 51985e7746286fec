//! What the whitelisted globals do when a pickle calls them (`REDUCE`, `NEWOBJ`) and how
//! torch's storage references (`BINPERSID`) are read: the only places a pickle's "code" has an
//! effect, and each one just builds a value.

use super::super::{Global, StorageRef, TensorRef};
use super::{Node, Value, Vm};
use crate::error::Result;

/// Most dimensions a tensor may have (PyTorch itself allows 64 at most for most ops).
const MAX_DIMS: usize = 64;

/// Longest argument tuple of any whitelisted call (`_rebuild_tensor_v2` takes 7).
const MAX_ARGS: usize = 8;

impl Vm<'_> {
    /// The items of a tuple or list of at most `max` items (None otherwise). Never copies a
    /// long sequence, so a memoized huge tuple passed again and again costs nothing.
    fn items(&self, v: &Value, max: usize) -> Option<Vec<Value>> {
        match v {
            Value::Node(id) => match &self.heap[*id] {
                Node::Tuple(items) | Node::List(items) if items.len() <= max => Some(items.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    fn dims(&self, v: &Value, what: &str) -> Result<Vec<u64>> {
        let items = self.items(v, MAX_DIMS).ok_or_else(|| {
            self.err(format!(
                "tensor {what} is not a tuple of at most {MAX_DIMS} ints"
            ))
        })?;
        items
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as u64),
                _ => Err(self.err(format!(
                    "tensor {what} holds a negative or non-integer value"
                ))),
            })
            .collect()
    }

    /// Applies a whitelisted callable. The only place a `REDUCE` has any effect.
    pub(super) fn call(&mut self, f: Value, args: Value) -> Result<Value> {
        let Value::Global(g) = f else {
            return Err(self.err("REDUCE of something that is not a whitelisted global"));
        };
        let args = self
            .items(&args, MAX_ARGS)
            .ok_or_else(|| self.err(format!("arguments to {} are not a short tuple", g.name())))?;
        match (g, args.as_slice()) {
            // torch pickles OrderedDict as `OrderedDict()` + SETITEMS; a defaultdict carries its
            // factory (kept as data, never called).
            (Global::OrderedDict | Global::Dict | Global::DefaultDict, [])
            | (Global::DefaultDict, [Value::None | Value::Global(_)]) => {
                Ok(self.alloc(Node::Dict(Vec::new())))
            }
            (Global::List, []) => Ok(self.alloc(Node::List(Vec::new()))),
            // torch.Size(tuple): the tuple itself (immutable, so sharing it is safe).
            (Global::Size, [t]) if self.items(t, MAX_DIMS).is_some() => Ok(t.clone()),
            (
                Global::RebuildTensorV2 | Global::RebuildTensor,
                [storage, offset, size, stride, ..],
            ) => {
                let storage = match storage {
                    Value::Node(id) => match &self.heap[*id] {
                        Node::Storage(s) => s.clone(),
                        _ => return Err(self.err("tensor rebuilt from a non-storage")),
                    },
                    _ => return Err(self.err("tensor rebuilt from a non-storage")),
                };
                let offset = match offset {
                    Value::Int(i) if *i >= 0 => *i as u64,
                    _ => return Err(self.err("tensor storage offset is not a non-negative int")),
                };
                let shape = self.dims(size, "size")?;
                let stride = self.dims(stride, "stride")?;
                if shape.len() != stride.len() {
                    return Err(self.err(format!(
                        "tensor size has {} dimensions but stride has {}",
                        shape.len(),
                        stride.len()
                    )));
                }
                let t = TensorRef {
                    storage,
                    offset,
                    shape,
                    stride,
                };
                Ok(self.alloc(Node::Tensor(t)))
            }
            (Global::RebuildParameter | Global::RebuildParameterWithState, [data, _, _, ..]) => {
                match data {
                    Value::Node(id) if matches!(self.heap[*id], Node::Tensor(_)) => {
                        Ok(data.clone())
                    }
                    _ => Err(self.err("parameter rebuilt from a non-tensor")),
                }
            }
            _ => Err(self.err(format!(
                "'{}' cannot be called with {} arguments here",
                g.name(),
                args.len()
            ))),
        }
    }

    /// torch's storage reference: `('storage', torch.<X>Storage, key, location, numel)`.
    pub(super) fn persistent(&mut self, pid: Value) -> Result<Value> {
        let items = self.items(&pid, 5).unwrap_or_default();
        let bad = || self.err("persistent id is not ('storage', type, key, location, numel)");
        let [Value::Str(tag), Value::Global(Global::Storage(dtype)), key, Value::Str(loc), Value::Int(numel)] =
            items.as_slice()
        else {
            return Err(bad());
        };
        let key = match key {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            _ => return Err(bad()),
        };
        if &**tag != "storage" || *numel < 0 {
            return Err(bad());
        }
        let s = StorageRef {
            dtype: *dtype,
            key,
            location: loc.to_string(),
            numel: *numel as u64,
        };
        Ok(self.alloc(Node::Storage(s)))
    }
}
