//! The calendar parser: any text parses or gives an error; what parses is strictly increasing and round-trips
//! through its own text form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qstore::{Calendar, Freq};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for freq in [Freq::DAY, Freq::MINUTE] {
        let Ok(cal) = Calendar::parse(text, std::path::Path::new("fuzz.txt"), freq) else { continue };
        assert!(cal.dates().windows(2).all(|w| w[0] < w[1]));
        if freq == Freq::MINUTE {
            let again = Calendar::parse(&cal.to_text(), std::path::Path::new("again.txt"), freq).unwrap();
            assert_eq!(again, cal);
        }
        let r = cal.locate(cal.first(), cal.last());
        assert_eq!(r, 0..cal.len());
    }
});
