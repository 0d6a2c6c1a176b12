// The image's allocator (feature `jemalloc`, see Cargo.toml).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    std::process::exit(kmsecrets::cli::main_with_args(
        std::env::args_os().collect(),
    ));
}
