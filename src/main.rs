fn main() {
    std::process::exit(kmsecrets::cli::main_with_args(
        std::env::args_os().collect(),
    ));
}
