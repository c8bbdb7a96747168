//! Prints how long a durable write takes on the disk holding a folder:
//! `cargo run -p journal --release --example disk_probe -- [DIR] [WRITE_SIZE_BYTES] [ITERATIONS]`
//! (defaults: the system temp folder, 4096, 1000).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let parse = |i: usize, default: usize| -> usize {
        args.get(i).map_or(default, |s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("argument {} must be a number, got {s:?}", i + 1);
                std::process::exit(2)
            })
        })
    };
    let (write_size, iterations) = (parse(1, 4096), parse(2, 1000));
    match journal::disk_probe(&dir, write_size, iterations) {
        Ok(p) => println!(
            "disk_probe dir={} write_size={write_size} iterations={iterations} o_direct={}: \
             write+fdatasync p50={:.1} us p99={:.1} us max={:.1} us, {:.1} MB/s",
            dir.display(),
            p.direct_io,
            p.sync_p50_us,
            p.sync_p99_us,
            p.sync_max_us,
            p.write_mb_per_s
        ),
        Err(e) => {
            eprintln!("disk_probe failed: {e}");
            std::process::exit(1)
        }
    }
}
