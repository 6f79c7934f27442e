//! The expression parser: any text parses or gives a positioned error; what parses prints a canonical text that
//! parses back to the same tree.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match qstore::expr::parse(text) {
        Ok(e) => {
            let again = qstore::expr::parse(&e.to_string()).expect("canonical text parses");
            assert_eq!(again, e);
            let _ = e.ext_window();
        }
        Err(qstore::Error::Expr { pos, .. }) => assert!(pos <= text.len()),
        Err(other) => panic!("a parse error of another kind: {other}"),
    }
});
