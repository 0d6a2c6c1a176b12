//! Snapshot tests of the `kmsecrets` command line: `tests/cmd/*.toml` give
//! the arguments and exit code; stdout/stderr are checked against the inline
//! `stdout`/`stderr` of each case. Regenerate with
//! `TRYCMD=overwrite cargo test --test cli_snapshots`, then review the diff.
//!
//! Every case runs with an empty environment (`env.inherit = false`) so that
//! `KMSECRETS_*`/`AWS_*` variables of the developer's shell cannot leak into
//! the output (clap prints `[env: NAME=value]` in help when they are set).

#[test]
fn cli_snapshots() {
    trycmd::TestCases::new()
        .register_bin(
            "kmsecrets",
            std::path::PathBuf::from(env!("CARGO_BIN_EXE_kmsecrets")),
        )
        .case("tests/cmd/*.toml");
}
