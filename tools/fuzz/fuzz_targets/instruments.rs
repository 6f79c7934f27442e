//! The instruments parser: any text parses or gives an error; what parses round-trips through its own text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qstore::Instruments;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(ins) = Instruments::parse(text, std::path::Path::new("fuzz.txt")) else { return };
    let again = Instruments::parse(&ins.to_text(), std::path::Path::new("again.txt")).unwrap();
    assert_eq!(again, ins);
});
