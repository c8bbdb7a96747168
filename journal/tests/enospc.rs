//! A full disk: on a small file-backed ext4 loop mount, appends end with a clear `NoSpace`
//! error, what was durable stays readable after reopen, and freeing space lets writing resume.
//! Needs root, `mkfs.ext4` and `mount`; otherwise it is skipped with a message.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use journal::{Error, Journal, Retention};

/// Unmounts (lazily, so a panic inside the mount never leaves it behind) on drop.
struct LoopMount {
    mount_point: PathBuf,
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.mount_point).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mount_point)
                .status();
        }
    }
}

fn run(command: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(command)
        .args(args)
        .output()
        .map_err(|e| format!("{command}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn mount_small_ext4(dir: &Path, size_mib: u64) -> Result<LoopMount, String> {
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        return Err("not running as root".into());
    }
    let image = dir.join("disk.img");
    let mount_point = dir.join("mnt");
    std::fs::create_dir_all(&mount_point).map_err(|e| e.to_string())?;
    let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
    file.set_len(size_mib * 1024 * 1024)
        .map_err(|e| e.to_string())?;
    let image = image.to_str().ok_or("path not UTF-8")?;
    run("mkfs.ext4", &["-q", "-F", "-m", "0", image])?;
    let mount = mount_point.to_str().ok_or("path not UTF-8")?;
    run("mount", &["-o", "loop", image, mount])?;
    Ok(LoopMount { mount_point })
}

#[test]
fn a_full_disk_fails_appends_clearly_and_keeps_durable_batches() {
    let dir = TempDir::new("enospc");
    let mount = match mount_small_ext4(dir.path(), 8) {
        Ok(mount) => mount,
        Err(why) => {
            eprintln!("skipped: cannot make a small loop-mounted ext4 ({why})");
            return;
        }
    };
    let journal_dir = mount.mount_point.join("journal");
    let (mut journal, _) = Journal::open(&journal_dir, options()).expect("open");
    let mut durable = 0;
    let error = loop {
        let batch = next_batch(&journal, 10, 2000);
        match journal.append(&batch) {
            Ok(position) => durable = position,
            Err(error) => break error,
        }
        assert!(durable < 1_000_000, "the 8 MiB disk never filled");
    };
    assert!(
        matches!(&error, Error::NoSpace { path, .. } if path.starts_with(&journal_dir)),
        "{error:?}"
    );
    assert!(error.to_string().contains("no space left"), "{error}");
    assert!(durable > 0);
    assert_eq!(journal.durable_position(), durable);
    // Still refused, not poisoned, and nothing half-prepared is left behind.
    let batch = next_batch(&journal, 10, 2000);
    assert!(matches!(journal.append(&batch), Err(Error::NoSpace { .. })));
    let names: Vec<String> = std::fs::read_dir(&journal_dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".prep-")), "{names:?}");
    drop(journal);

    let (mut journal, report) =
        Journal::open(&journal_dir, options()).expect("reopen on a full disk");
    assert_eq!(report.last_position, Some(durable));
    assert_eq!(
        read_all_positions(&journal_dir),
        (1..=durable).collect::<Vec<_>>()
    );

    // Freeing space (retention) lets writing resume.
    assert!(
        journal
            .retain_from(durable, &Retention::Delete)
            .expect("retain")
            > 0
    );
    if let Some(index) = journal.take_spare_request() {
        journal
            .preparer()
            .prepare(index)
            .expect("space is free again");
    }
    let position = append_batches(&mut journal, 20, 10, 2000);
    assert_eq!(position, durable + 200);
}
