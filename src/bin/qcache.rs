//! `qcache`: see [`qstore::cli::qcache`].

fn main() -> std::process::ExitCode {
    qstore::cli::qcache::main()
}
