//! Tests of the safe pickle subset, on pickles written byte by byte with [`Pw`].

use super::*;
use crate::error::ErrorKind;

/// A pickle writer for tests: each method appends the opcode bytes CPython's protocol-2 pickler
/// writes for that value (the layout `torch.save` produces, see `tensor`).
pub(crate) struct Pw {
    /// The pickle so far (starts with `PROTO 2`).
    pub b: Vec<u8>,
}

impl Pw {
    /// `\x80\x02` (PROTO 2).
    pub fn new() -> Pw {
        Pw { b: vec![0x80, 2] }
    }

    /// Raw opcode bytes.
    pub fn op(&mut self, bytes: &[u8]) -> &mut Pw {
        self.b.extend_from_slice(bytes);
        self
    }

    /// `X <u32 len> <utf-8>` (BINUNICODE).
    pub fn s(&mut self, s: &str) -> &mut Pw {
        self.b.push(b'X');
        self.b.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.op(s.as_bytes())
    }

    /// BININT1 `K`, BININT2 `M`, BININT `J` or LONG1 `\x8a`, the smallest that fits.
    pub fn int(&mut self, i: i64) -> &mut Pw {
        match i {
            0..=0xff => self.op(&[b'K', i as u8]),
            0x100..=0xffff => self.op(&[b'M', i as u8, (i >> 8) as u8]),
            _ if i32::try_from(i).is_ok() => {
                self.op(b"J");
                self.op(&(i as i32).to_le_bytes())
            }
            _ => {
                self.op(&[0x8a, 8]);
                self.op(&i.to_le_bytes())
            }
        }
    }

    /// `c<module>\n<name>\n` (GLOBAL).
    pub fn global(&mut self, module: &str, name: &str) -> &mut Pw {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }

    /// A tuple of ints: `)` when empty, else `( ints t`.
    pub fn ints(&mut self, v: &[u64]) -> &mut Pw {
        if v.is_empty() {
            return self.op(b")");
        }
        self.op(b"(");
        for &x in v {
            self.int(x as i64);
        }
        self.op(b"t")
    }

    /// A tensor exactly as torch.save pickles one:
    /// `c torch._utils _rebuild_tensor_v2` `(` `(` 'storage' `c torch <class>` key 'cpu' numel
    /// `t` `Q`(BINPERSID) offset size-tuple stride-tuple `\x89`(False)
    /// `c collections OrderedDict` `)` `R` `t` `R`.
    pub fn tensor(
        &mut self,
        class: &str,
        key: &str,
        numel: u64,
        offset: u64,
        shape: &[u64],
        stride: &[u64],
    ) -> &mut Pw {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"((");
        self.s("storage").global("torch", class).s(key).s("cpu");
        self.int(numel as i64).op(b"tQ");
        self.int(offset as i64).ints(shape).ints(stride).op(&[0x89]);
        self.global("collections", "OrderedDict")
            .op(b")Rt")
            .op(b"R")
    }

    /// Appends STOP and returns the bytes.
    pub fn done(&mut self) -> Vec<u8> {
        self.op(b".");
        std::mem::take(&mut self.b)
    }
}

fn load_ok(b: &[u8]) -> Object {
    load(b, "t.pkl").unwrap_or_else(|e| panic!("{e}"))
}

fn load_err(b: &[u8]) -> String {
    let e = load(b, "t.pkl").expect_err("must be refused");
    assert_eq!(e.kind(), ErrorKind::BadInput);
    assert!(e.message().starts_with("t.pkl: "), "{}", e.message());
    e.message().to_string()
}

fn s(x: &str) -> Object {
    Object::Str(x.to_string())
}

#[test]
fn plain_values_build_the_expected_tree() {
    // {'a': 1, 'b': [True, None, 2.5, -3, 70000, 2**40], 'c': (b'xy', 'é')}
    let mut p = Pw::new();
    p.op(b"}q\x00(").s("a").int(1).s("b").op(b"]q\x01(");
    p.op(&[0x88]).op(b"N").op(b"G").op(&2.5f64.to_be_bytes());
    p.op(b"J")
        .op(&(-3i32).to_le_bytes())
        .int(70000)
        .int(1 << 40)
        .op(b"e");
    p.s("c").op(b"C\x02xy").s("é").op(&[0x86]).op(b"u");
    let want = Object::Dict(vec![
        (s("a"), Object::Int(1)),
        (
            s("b"),
            Object::List(vec![
                Object::Bool(true),
                Object::None,
                Object::Float(2.5),
                Object::Int(-3),
                Object::Int(70000),
                Object::Int(1 << 40),
            ]),
        ),
        (
            s("c"),
            Object::Tuple(vec![Object::Bytes(b"xy".to_vec()), s("é")]),
        ),
    ]);
    assert_eq!(load_ok(&p.done()), want);
}

#[test]
fn protocol_4_frames_short_strings_and_stack_global() {
    // PROTO 4, FRAME, EMPTY_DICT, MEMOIZE, SHORT_BINUNICODE 'k', STACK_GLOBAL torch.float32,
    // SETITEM, STOP.
    let mut b = vec![0x80, 4, 0x95];
    b.extend_from_slice(&100u64.to_le_bytes());
    b.extend_from_slice(&[b'}', 0x94, 0x8c, 1, b'k', 0x8c, 5]);
    b.extend_from_slice(b"torch");
    b.extend_from_slice(&[0x8c, 7]);
    b.extend_from_slice(b"float32");
    b.extend_from_slice(&[0x93, b's', b'.']);
    let want = Object::Dict(vec![(
        s("k"),
        Object::Global(Global::Dtype(TorchDtype::F32)),
    )]);
    assert_eq!(load_ok(&b), want);
}

#[test]
fn memo_shares_containers_like_python() {
    // d = {'x': 1}; {'a': d, 'b': d}: the second use is a BINGET of d's memo slot, written
    // before d was filled. A copying memo would give {} for 'b'.
    let mut p = Pw::new();
    p.op(b"}q\x00(").s("a").op(b"}q\x01").s("x").int(1).op(b"s");
    p.s("b").op(b"h\x01u");
    let inner = Object::Dict(vec![(s("x"), Object::Int(1))]);
    let want = Object::Dict(vec![(s("a"), inner.clone()), (s("b"), inner)]);
    assert_eq!(load_ok(&p.done()), want);
}

#[test]
fn repeated_key_keeps_first_position_and_last_value() {
    let mut p = Pw::new();
    p.op(b"}(")
        .s("a")
        .int(1)
        .s("b")
        .int(2)
        .s("a")
        .int(3)
        .op(b"u");
    let want = Object::Dict(vec![(s("a"), Object::Int(3)), (s("b"), Object::Int(2))]);
    assert_eq!(load_ok(&p.done()), want);
}

#[test]
fn tensor_rebuild_gives_a_view_of_the_storage() {
    let mut p = Pw::new();
    p.op(b"}(")
        .s("w")
        .tensor("BFloat16Storage", "0", 12, 2, &[2, 3], &[1, 2]);
    p.s("p").global("torch._utils", "_rebuild_parameter");
    p.op(b"(")
        .tensor("HalfStorage", "7", 1, 0, &[], &[])
        .op(&[0x89])
        .op(b"}tR");
    p.op(b"u");
    let Object::Dict(d) = load_ok(&p.done()) else {
        panic!("not a dict")
    };
    let Object::Tensor(t) = &d[0].1 else {
        panic!("not a tensor")
    };
    assert_eq!(t.storage.dtype, TorchDtype::BF16);
    assert_eq!(
        (t.storage.key.as_str(), t.storage.location.as_str()),
        ("0", "cpu")
    );
    assert_eq!((t.storage.numel, t.offset), (12, 2));
    assert_eq!(
        (t.shape.as_slice(), t.stride.as_slice()),
        (&[2u64, 3][..], &[1u64, 2][..])
    );
    let Object::Tensor(t) = &d[1].1 else {
        panic!("parameter is not a tensor")
    };
    assert_eq!((t.storage.dtype, t.shape.len()), (TorchDtype::F16, 0));
}

#[test]
fn defaultdict_of_floats_loads_as_a_dict() {
    // SmoothQuant's `*-smoothquant-scales.pt`: defaultdict(dict) {'m': {'input': 1.5}}.
    let mut p = Pw::new();
    p.global("collections", "defaultdict")
        .global("__builtin__", "dict")
        .op(&[0x85])
        .op(b"R");
    p.op(b"(")
        .s("m")
        .op(b"}")
        .s("input")
        .op(b"G")
        .op(&1.5f64.to_be_bytes())
        .op(b"su");
    let inner = Object::Dict(vec![(s("input"), Object::Float(1.5))]);
    assert_eq!(load_ok(&p.done()), Object::Dict(vec![(s("m"), inner)]));
}

#[test]
fn forbidden_globals_are_refused_by_name_when_read() {
    for (module, name, shown) in [
        ("__builtin__", "print", "builtins.print"),
        ("builtins", "eval", "builtins.eval"),
        ("os", "system", "os.system"),
        (
            "torch._utils",
            "_rebuild_from_type_v2",
            "torch._utils._rebuild_from_type_v2",
        ),
        ("torch", "load", "torch.load"),
        (
            "torch.storage",
            "_load_from_bytes",
            "torch.storage._load_from_bytes",
        ),
    ] {
        let mut p = Pw::new();
        p.global(module, name).s("hi").op(&[0x85]).op(b"R");
        let msg = load_err(&p.done());
        let want = format!(
            "refusing to load '{shown}' (not a tensor or dict; shardquant never executes \
             pickled code) (pickle byte 2)"
        );
        assert!(msg.contains(&want), "{msg}");
    }
    // The same through STACK_GLOBAL (protocol 4).
    let b = [
        &[0x80, 4, 0x8c, 2][..],
        b"os",
        &[0x8c, 6],
        b"system",
        &[0x93, b'.'],
    ]
    .concat();
    assert!(load_err(&b).contains("'os.system'"));
}

#[test]
fn whitelisted_globals_cannot_be_called_outside_their_role() {
    let mut p = Pw::new();
    p.global("torch", "FloatStorage")
        .s("x")
        .op(&[0x85])
        .op(b"R");
    assert!(load_err(&p.done()).contains("'torch.FloatStorage' cannot be called"));
    // REDUCE of a non-global (a string) is refused too.
    let mut p = Pw::new();
    p.s("f").op(b")R");
    assert!(load_err(&p.done()).contains("not a whitelisted global"));
}

#[test]
fn code_paths_of_full_pickle_are_refused() {
    for (bytes, what) in [
        (
            &b"\x80\x02(cos\nsystem\nX\x00\x00\x00\x00o."[..],
            "'os.system'",
        ),
        (&b"\x80\x02(X\x00\x00\x00\x00ios\nsystem\n."[..], "INST/OBJ"),
        (&b"\x80\x02\x82\x01."[..], "extension registry"),
        (&b"\x80\x05\x97."[..], "out-of-band"),
        (&b"\x80\x02P0\n."[..], "text persistent ids"),
    ] {
        let msg = load_err(bytes);
        assert!(msg.contains(what), "{msg}");
    }
}

#[test]
fn malformed_pickles_give_clean_errors() {
    let cases: &[(&[u8], &str)] = &[
        (
            b"\x80\x02}\xff.",
            "unknown pickle opcode 0xff (pickle byte 3)",
        ),
        (b"\x80\x02}", "ends without a STOP"),
        (
            b"\x80\x02X\x05\x00\x00\x00ab",
            "declared length 5 exceeds the 2 bytes left",
        ),
        (b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\x7f.", "exceeds"),
        (b"\x80\x02\x8e\x00\x00\x00\x00\x00\x00\x00\x80.", "exceeds"),
        (b"\x80\x02\x8b\xff\xff\xff\xff.", "exceeds"),
        (b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", "not valid UTF-8"),
        (b"\x80\x02s.", "stack underflow"),
        (b"\x80\x02Nt.", "MARK expected"),
        (b"\x80\x02h\x07.", "memo index 7 was never stored"),
        (
            b"\x80\x02}r\xff\xff\xff\xffh\x00.",
            "memo index 0 was never stored",
        ),
        (b"\x80\x02(.", "stack underflow"),
        (b"\x80\x02K\x01K\x02a.", "not a list or dict"),
        (b"\x80\x09}.", "unsupported pickle protocol 9"),
        (
            b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.",
            "does not fit in 64 bits",
        ),
        (b"\x80\x02cos\n", "unterminated text argument"),
        (b"\x80\x02N\x86.", "stack underflow"),
    ];
    for (bytes, want) in cases {
        let msg = load_err(bytes);
        assert!(msg.contains(want), "{bytes:?}: {msg}");
    }
}

#[test]
fn big_and_negative_integers_round_trip() {
    for v in [
        0i64,
        1,
        -1,
        255,
        256,
        -129,
        1 << 31,
        -(1 << 40),
        i64::MAX,
        i64::MIN,
    ] {
        let mut p = Pw::new();
        p.op(&[0x8a, 8]).op(&v.to_le_bytes());
        assert_eq!(load_ok(&p.done()), Object::Int(v));
    }
    // LONG1 with a 9th sign-extension byte, and a 2-byte negative: -2 = fe ff.
    assert_eq!(
        load_ok(b"\x80\x02\x8a\x09\xfe\xff\xff\xff\xff\xff\xff\xff\xff."),
        Object::Int(-2)
    );
    assert_eq!(load_ok(b"\x80\x02\x8a\x02\xfe\xff."), Object::Int(-2));
    assert_eq!(load_ok(b"\x80\x02\x8a\x00."), Object::Int(0));
}

#[test]
fn huge_memo_index_allocates_nothing() {
    // LONG_BINPUT 0xfffffff0 then LONG_BINGET of it: a map, not a 4-billion-slot vector.
    let b = b"\x80\x02Nr\xf0\xff\xff\xff0j\xf0\xff\xff\xff.";
    assert_eq!(load_ok(b), Object::None);
}

#[test]
fn recursion_bombs_are_stopped() {
    // 100 000 nested lists: `]` × n then `a` × (n - 1) appends each list into the one below.
    let n = 100_000;
    let mut b = vec![0x80, 2];
    b.extend(std::iter::repeat_n(b']', n));
    b.extend(std::iter::repeat_n(b'a', n - 1));
    b.push(b'.');
    assert!(load_err(&b).contains("nested deeper than 64"));
    // 100 000 nested tuples via TUPLE1.
    let mut b = vec![0x80, 2, b')'];
    b.extend(std::iter::repeat_n(0x85, n));
    b.push(b'.');
    assert!(load_err(&b).contains("nested deeper than 64"));
    // A list that contains itself: EMPTY_LIST BINPUT 0 BINGET 0 APPEND.
    assert!(load_err(b"\x80\x02]q\x00h\x00a.").contains("self-reference"));
}

#[test]
fn shared_reference_blowup_is_stopped() {
    // t0 = (); t(i+1) = (t(i), t(i)) via DUP + TUPLE2: 40 levels = 2^40 nodes in 83 bytes.
    let mut b = vec![0x80, 2, b')'];
    for _ in 0..40 {
        b.extend_from_slice(&[b'2', 0x86]);
    }
    b.push(b'.');
    assert!(load_err(&b).contains("expands to more than the pickle could hold"));
    // One 100 kB string, memoized, then referenced 50 000 times: 5 GB if each were copied.
    let mut p = Pw::new();
    p.op(b"]").s(&"x".repeat(100_000)).op(b"q\x00a(");
    p.op(&b"h\x00".repeat(50_000)).op(b"e");
    assert!(load_err(&p.done()).contains("expands to more than the pickle could hold"));
}

#[test]
fn persistent_id_must_be_a_storage_tuple() {
    let mut p = Pw::new();
    p.op(b"(")
        .s("storage")
        .global("torch", "float32")
        .s("0")
        .s("cpu")
        .int(1)
        .op(b"tQ");
    assert!(load_err(&p.done()).contains("persistent id is not"));
    let mut p = Pw::new();
    p.s("x").op(b"Q");
    assert!(load_err(&p.done()).contains("persistent id is not"));
}

#[test]
fn tensor_arguments_are_checked() {
    // size with 2 dims, stride with 1.
    let mut p = Pw::new();
    p.tensor("FloatStorage", "0", 4, 0, &[2, 2], &[1]);
    assert!(load_err(&p.done()).contains("size has 2 dimensions but stride has 1"));
    // negative stride (torch never writes one).
    let mut p = Pw::new();
    p.global("torch._utils", "_rebuild_tensor_v2")
        .op(b"((")
        .s("storage");
    p.global("torch", "FloatStorage")
        .s("0")
        .s("cpu")
        .int(4)
        .op(b"tQ")
        .int(0);
    p.ints(&[4])
        .op(b"(J")
        .op(&(-1i32).to_le_bytes())
        .op(b"tt")
        .op(b"R");
    assert!(load_err(&p.done()).contains("stride holds a negative"));
}

#[test]
fn memoized_huge_arguments_are_not_copied_per_call() {
    // A 100 000-int tuple memoized, then passed to torch.Size 100 000 times: copying it per
    // call would allocate 200 GB. It is refused as a size (more than 64 dims) at the first call.
    let mut p = Pw::new();
    p.op(b"]q\x00(").op(&b"K\x01".repeat(100_000)).op(b"tq\x01");
    p.global("torch", "Size").op(b"q\x02");
    p.op(&b"h\x02h\x01\x85Ra".repeat(100_000));
    assert!(load_err(&p.done()).contains("'torch.Size' cannot be called with 1 arguments"));
    // The same tuple as an argument list is refused before being copied.
    let mut p = Pw::new();
    p.op(b"(").op(&b"K\x01".repeat(100_000)).op(b"tq\x01");
    p.global("collections", "OrderedDict").op(b"h\x01R");
    assert!(load_err(&p.done()).contains("are not a short tuple"));
}

#[test]
fn truncation_anywhere_is_an_error_not_a_panic() {
    let mut p = Pw::new();
    p.op(b"}(")
        .s("w")
        .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
        .op(b"u");
    let full = p.done();
    assert!(load(&full, "t").is_ok());
    for cut in 0..full.len() {
        assert!(load(&full[..cut], "t").is_err(), "cut at {cut}");
    }
}
