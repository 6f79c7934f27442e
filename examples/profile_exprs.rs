//! Times each expression of a feature set over every instrument of a store, one thread: where the time goes.
//! `cargo run --release --example profile_exprs -- STORE [SET]`
use std::time::Instant;

use qstore::{Engine, FeatureSet, Freq, Universe};

fn main() -> qstore::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let store = Engine::open(&args[1])?;
    let set = FeatureSet::resolve(args.get(2).map_or("alpha158", String::as_str))?;
    let symbols: Vec<String> = store
        .store()
        .instruments("all")?
        .symbols()
        .map(String::from)
        .collect();
    let t = Instant::now();
    let all: Vec<&str> = set.features.iter().map(|f| f.expr.as_str()).collect();
    let frame = store.features(Universe::Market("all"), &all, None, None, Freq::DAY)?;
    println!(
        "whole set in one query: {:.2} s ({} rows x {} columns)",
        t.elapsed().as_secs_f64(),
        frame.len(),
        frame.columns().len()
    );
    drop(frame);
    if std::env::var_os("WHOLE_ONLY").is_some() {
        return Ok(());
    }
    let mut times = Vec::new();
    for f in &set.features {
        let t = Instant::now();
        store.features(
            Universe::List(&symbols),
            &[f.expr.as_str()],
            None,
            None,
            Freq::DAY,
        )?;
        times.push((t.elapsed().as_secs_f64(), f.name.clone(), f.expr.clone()));
    }
    let total: f64 = times.iter().map(|t| t.0).sum();
    times.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("total {total:.2} s over {} expressions", times.len());
    for (t, n, e) in times.iter().take(25) {
        println!("{t:7.3} s  {n:10} {e}");
    }
    Ok(())
}
