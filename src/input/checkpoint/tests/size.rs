//! Parsing shard sizes.

use crate::error::ErrorKind;
use crate::input::checkpoint::parse_size;

#[test]
fn sizes_huggingface_accepts() {
    let cases: [(&str, u64); 14] = [
        ("5GB", 5_000_000_000),
        ("500MB", 500_000_000),
        ("40KB", 40_000),
        ("2TB", 2_000_000_000_000),
        ("5GiB", 5 << 30),
        ("512MiB", 512 << 20),
        ("40KiB", 40 << 10),
        ("1TiB", 1 << 40),
        ("1024", 1024),
        ("1024B", 1024),
        ("5gb", 5_000_000_000),
        (" 10 MB ", 10_000_000),
        ("1.5GB", 1_500_000_000),
        ("0.5KiB", 512),
    ];
    for (text, bytes) in cases {
        assert_eq!(parse_size(text).unwrap(), bytes, "{}", text);
    }
    assert_eq!(parse_size("18446744073709551615").unwrap(), u64::MAX);
}

#[test]
fn sizes_that_are_errors() {
    for text in [
        "",
        "GB",
        "5XB",
        "5G",
        "five GB",
        "1.2.3GB",
        "-5GB",
        "0",
        "0KB",
        "0.0001KB",
        "20000000TB",
        "5 G B",
        "1e9",
    ] {
        let err = parse_size(text).expect_err(text);
        assert_eq!(err.kind(), ErrorKind::Usage, "{}", text);
        assert!(err.message().contains(&format!("{:?}", text)), "{}", err);
        assert!(err.hint().unwrap().contains("5GB"));
    }
}
