//! A safe subset of Python's pickle format: enough to read what `torch.save` writes for a dict
//! of tensors, and nothing that can run code.
//!
//! Real unpickling calls arbitrary Python callables named by the file (`GLOBAL` + `REDUCE`).
//! This interpreter only *builds values*: every `GLOBAL` is looked up in a fixed whitelist
//! ([`Global`]) the moment it is read, and anything else stops the load with an error naming
//! the global (`refusing to load 'builtins.print' …`). The whitelisted callables are
//! interpreted by Rust code here (a dict constructor, the tensor rebuild functions); nothing of
//! the file is ever executed. Opcodes of protocols 0 to 5 that plain data needs are accepted;
//! object instantiation (`INST`, `OBJ`), the extension registry and out-of-band buffers are
//! refused.
//!
//! Tensors come out as [`TensorRef`]s: the storage's dtype, archive key and element count (from
//! torch's `persistent_id` tuple) plus the view's offset, shape and stride. Reading the storage
//! bytes is the caller's business (`torchfile`).
//!
//! Hostile input: every length is checked against the remaining bytes before anything is
//! allocated, the memo is a map (a huge `BINPUT` index allocates nothing), containers live in an
//! arena so dropping never recurses, and turning the result into an [`Object`] tree is bounded in
//! depth ([`MAX_DEPTH`]) and in total nodes (shared references cannot expand exponentially).

use crate::error::Result;

/// Deepest nesting of containers (dict, list, tuple) accepted in a loaded object.
pub const MAX_DEPTH: usize = 64;

/// A loaded pickle value, as an owned tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// Python `None`.
    None,
    /// A `bool`.
    Bool(bool),
    /// An `int` that fits in 64 bits (larger ones are refused).
    Int(i64),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// `bytes` / `bytearray` (and protocol-0/1 byte strings).
    Bytes(Vec<u8>),
    /// A `tuple` (also `frozenset`, `torch.Size`).
    Tuple(Vec<Object>),
    /// A `list` (also `set`).
    List(Vec<Object>),
    /// A `dict`, `OrderedDict` or `defaultdict`, in insertion order. A key set twice keeps its
    /// first position and its last value, as in Python.
    Dict(Vec<(Object, Object)>),
    /// A whitelisted global used as a value (e.g. `torch.float32`).
    Global(Global),
    /// A storage reference outside a tensor.
    Storage(StorageRef),
    /// A tensor (`torch._utils._rebuild_tensor_v2` and friends).
    Tensor(TensorRef),
}

impl Object {
    /// A short name of the value's Python type, for messages (`"int"`, `"dict"`, `"Tensor"`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Object::None => "None",
            Object::Bool(_) => "bool",
            Object::Int(_) => "int",
            Object::Float(_) => "float",
            Object::Str(_) => "str",
            Object::Bytes(_) => "bytes",
            Object::Tuple(_) => "tuple",
            Object::List(_) => "list",
            Object::Dict(_) => "dict",
            Object::Global(_) => "global",
            Object::Storage(_) => "Storage",
            Object::Tensor(_) => "Tensor",
        }
    }
}

/// The element type of a torch storage (from `torch.<X>Storage`) or a `torch.<dtype>` global.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchDtype {
    /// `torch.float64` / `DoubleStorage`.
    F64,
    /// `torch.float32` / `FloatStorage`.
    F32,
    /// `torch.float16` / `HalfStorage`.
    F16,
    /// `torch.bfloat16` / `BFloat16Storage`.
    BF16,
    /// `torch.int64` / `LongStorage`.
    I64,
    /// `torch.int32` / `IntStorage`.
    I32,
    /// `torch.int16` / `ShortStorage`.
    I16,
    /// `torch.int8` / `CharStorage`.
    I8,
    /// `torch.uint8` / `ByteStorage` (also `UntypedStorage`).
    U8,
    /// `torch.bool` / `BoolStorage`.
    Bool,
}

/// (storage class, dtype attribute, dtype). The only torch type names the loader accepts.
const TORCH_TYPES: &[(&str, &str, TorchDtype)] = &[
    ("DoubleStorage", "float64", TorchDtype::F64),
    ("FloatStorage", "float32", TorchDtype::F32),
    ("HalfStorage", "float16", TorchDtype::F16),
    ("BFloat16Storage", "bfloat16", TorchDtype::BF16),
    ("LongStorage", "int64", TorchDtype::I64),
    ("IntStorage", "int32", TorchDtype::I32),
    ("ShortStorage", "int16", TorchDtype::I16),
    ("CharStorage", "int8", TorchDtype::I8),
    ("ByteStorage", "uint8", TorchDtype::U8),
    ("BoolStorage", "bool", TorchDtype::Bool),
];

impl TorchDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            TorchDtype::F64 | TorchDtype::I64 => 8,
            TorchDtype::F32 | TorchDtype::I32 => 4,
            TorchDtype::F16 | TorchDtype::BF16 | TorchDtype::I16 => 2,
            TorchDtype::I8 | TorchDtype::U8 | TorchDtype::Bool => 1,
        }
    }

    /// The safetensors-style name (`"F32"`, `"BF16"`, …).
    pub fn name(self) -> &'static str {
        match self {
            TorchDtype::F64 => "F64",
            TorchDtype::F32 => "F32",
            TorchDtype::F16 => "F16",
            TorchDtype::BF16 => "BF16",
            TorchDtype::I64 => "I64",
            TorchDtype::I32 => "I32",
            TorchDtype::I16 => "I16",
            TorchDtype::I8 => "I8",
            TorchDtype::U8 => "U8",
            TorchDtype::Bool => "BOOL",
        }
    }
}

/// The whitelist: every global a pickle may name. Anything else is refused when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`: builds a dict.
    OrderedDict,
    /// `collections.defaultdict`: builds a dict (the factory is kept as data, never called).
    DefaultDict,
    /// `builtins.dict`: builds a dict (also a `defaultdict` factory).
    Dict,
    /// `builtins.list`: a `defaultdict` factory; builds a list.
    List,
    /// `torch._utils._rebuild_tensor_v2`: a tensor view of a storage.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor`: the older form without `requires_grad`.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter`: an `nn.Parameter`, read as its tensor.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state`: same, with extra state (ignored).
    RebuildParameterWithState,
    /// `torch.Size`: read as a tuple.
    Size,
    /// `torch.<X>Storage` (and `torch.UntypedStorage`): a storage type tag.
    Storage(TorchDtype),
    /// `torch.<dtype>`: a dtype value.
    Dtype(TorchDtype),
}

impl Global {
    /// Looks `module.name` up in the whitelist (Python 2 module names already mapped).
    pub fn lookup(module: &str, name: &str) -> Option<Global> {
        let g = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("collections", "defaultdict") => Global::DefaultDict,
            ("builtins", "dict") => Global::Dict,
            ("builtins", "list") => Global::List,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch", "Size") => Global::Size,
            ("torch", "UntypedStorage") => Global::Storage(TorchDtype::U8),
            ("torch", n) => {
                let row = TORCH_TYPES.iter().find(|r| r.0 == n || r.1 == n)?;
                if row.0 == n {
                    Global::Storage(row.2)
                } else {
                    Global::Dtype(row.2)
                }
            }
            _ => return None,
        };
        Some(g)
    }

    /// The dotted Python name, for messages.
    pub fn name(self) -> String {
        let s = match self {
            Global::OrderedDict => "collections.OrderedDict",
            Global::DefaultDict => "collections.defaultdict",
            Global::Dict => "builtins.dict",
            Global::List => "builtins.list",
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2",
            Global::RebuildTensor => "torch._utils._rebuild_tensor",
            Global::RebuildParameter => "torch._utils._rebuild_parameter",
            Global::RebuildParameterWithState => "torch._utils._rebuild_parameter_with_state",
            Global::Size => "torch.Size",
            Global::Storage(TorchDtype::U8) => "torch.ByteStorage",
            Global::Storage(d) | Global::Dtype(d) => {
                let row = TORCH_TYPES
                    .iter()
                    .find(|r| r.2 == d)
                    .expect("every dtype has a row");
                let n = if matches!(self, Global::Storage(_)) {
                    row.0
                } else {
                    row.1
                };
                return format!("torch.{n}");
            }
        };
        s.to_string()
    }
}

/// A storage as torch's `persistent_id` names it: `('storage', torch.<X>Storage, key, location,
/// numel)`. The bytes are the archive entry `<prefix>/data/<key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// Element type of the storage.
    pub dtype: TorchDtype,
    /// Archive key (a decimal string in files torch writes).
    pub key: String,
    /// Device it was saved from (`"cpu"`, `"cuda:0"`); informational.
    pub location: String,
    /// Number of elements the storage holds, as declared by the pickle (not yet checked).
    pub numel: u64,
}

/// A tensor: a strided view of a storage. Nothing here is checked against the storage yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// The storage viewed.
    pub storage: StorageRef,
    /// Offset of element 0, in elements of the storage.
    pub offset: u64,
    /// Shape (empty for a 0-d tensor).
    pub shape: Vec<u64>,
    /// Stride per dimension, in elements.
    pub stride: Vec<u64>,
}

/// Interprets `data` (a whole pickle) and returns the object it builds.
///
/// `what` names the source in every error message (e.g. `"x.pt (archive/data.pkl)"`).
pub fn load(data: &[u8], what: &str) -> Result<Object> {
    vm::load(data, what)
}

mod vm;

#[cfg(test)]
pub(crate) mod tests;
