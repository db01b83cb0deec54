//! Positions: the Go file layout, resuming Go-written files, corrupt files, atomic commits.

use std::fs;
use std::path::{Path, PathBuf};

use log_capturer::decode::timestamp::parse_rfc3339_nanos;
use log_capturer::state::positions::{
    ContainerPosition, PositionStore, PositionsError, Resume, CONTAINER_POSITIONS_BAK,
    CONTAINER_POSITIONS_FILE, CONTAINER_POSITIONS_TMP, MAX_SKIP, STATUS_ACTIVE, STATUS_RESTARTED,
    STATUS_STOPPED,
};
use serde_json::Value;

const FULL_ID: &str = "3f2a9c1b7d4e5a6b7c8d9e0f11223344556677889900aabbccddeeff00112233";

fn ts(s: &str) -> i64 {
    parse_rfc3339_nanos(s.as_bytes()).unwrap()
}

/// A fresh, empty, not yet existing directory under the system temp dir.
fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "log_capturer_positions_{}_{name}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// What log_capturer_go writes (`json.MarshalIndent(map[string]*ContainerPosition, "", "  ")`):
/// map keyed by the 12-char id, keys sorted, Go field order, `time.Time` as RFC3339Nano with
/// trailing zeros trimmed and the local offset, zero times as year 1, no trailing newline.
const GO_FILE: &str = r#"{
  "0badc0ffee00": {
    "container_id": "0badc0ffee00",
    "since": "0001-01-01T00:00:00Z",
    "last_read": "0001-01-01T00:00:00Z",
    "last_log_time": "0001-01-01T00:00:00Z",
    "log_count": 0,
    "bytes_read": 0,
    "status": "removed",
    "restart_count": 0
  },
  "3f2a9c1b7d4e": {
    "container_id": "3f2a9c1b7d4e",
    "since": "2025-01-14T09:12:03.123456789-03:00",
    "last_read": "2025-01-14T09:45:10.5-03:00",
    "last_log_time": "2025-01-14T09:45:10.49871-03:00",
    "log_count": 4212,
    "bytes_read": 512340,
    "status": "active",
    "restart_count": 0
  },
  "a1b2c3d4e5f6": {
    "container_id": "a1b2c3d4e5f6",
    "since": "2025-01-14T12:00:00Z",
    "last_read": "2025-01-14T12:44:59.9Z",
    "last_log_time": "2025-01-14T12:44:59.87Z",
    "log_count": 91,
    "bytes_read": 10402,
    "status": "stopped",
    "restart_count": 2
  }
}"#;

#[test]
fn commit_then_load_gives_equal_records() {
    let dir = tempdir("roundtrip");
    let mut store = PositionStore::load(&dir).unwrap();
    assert!(store.is_empty());
    assert!(!store.dirty());

    let r1 = Resume {
        since_ns: ts("2026-11-27T22:23:11.750760435Z"),
        skip: 3,
    };
    store.advance(
        FULL_ID,
        "/web-1",
        r1,
        10,
        700,
        ts("2026-11-27T22:23:12.750760435Z"),
    );
    store.advance(
        FULL_ID,
        "web-1",
        r1,
        5,
        300,
        ts("2026-11-27T22:23:12.750760435Z"),
    );
    let r2 = Resume {
        since_ns: -1_500_000_000,
        skip: 0,
    };
    store.advance("b00000000001", "", r2, 1, 1, -1_000_000_000);
    store.set_status("b00000000001", STATUS_RESTARTED);
    store.set_status("c00000000002", STATUS_STOPPED);
    assert!(store.dirty());
    store.commit().unwrap();
    assert!(!store.dirty());

    let loaded = PositionStore::load(&dir).unwrap();
    assert_eq!(loaded.len(), 3);
    for (id, pos) in store.iter() {
        assert_eq!(loaded.get(id), Some(pos), "{id}");
    }
    let p = loaded.get(FULL_ID).unwrap();
    assert_eq!(p.container_id, "3f2a9c1b7d4e");
    assert_eq!(p.container_name.as_deref(), Some("web-1"));
    assert_eq!((p.log_count, p.bytes_read), (15, 1000));
    assert_eq!(loaded.resume(FULL_ID), Some(r1));
    assert_eq!(loaded.resume("3f2a9c1b7d4e"), Some(r1));
    assert_eq!(loaded.resume("b00000000001"), Some(r2));
    assert_eq!(loaded.get("b00000000001").unwrap().restart_count, 1);
    // Known to the store, but nothing delivered: read from the start.
    assert_eq!(loaded.resume("c00000000002"), None);
    assert_eq!(loaded.resume("ffffffffffff"), None);

    // The layout is Go's: an object keyed by short id, Go's names, times as RFC 3339 strings.
    let text = fs::read_to_string(dir.join(CONTAINER_POSITIONS_FILE)).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let rec = &v["3f2a9c1b7d4e"];
    assert_eq!(rec["container_id"], "3f2a9c1b7d4e");
    assert_eq!(rec["since"], "2026-11-27T22:23:11.750760435Z");
    assert_eq!(rec["last_log_time"], "2026-11-27T22:23:12.750760435Z");
    assert!(rec["last_read"].as_str().unwrap().ends_with('Z'));
    assert_eq!(rec["log_count"], 15);
    assert_eq!(rec["bytes_read"], 1000);
    assert_eq!(rec["status"], "active");
    assert_eq!(rec["restart_count"], 0);
    assert_eq!(rec["since_ns"], 1_795_818_191_750_760_435i64);
    assert_eq!(rec["skip"], 3);
    assert_eq!(v["c00000000002"]["since"], "0001-01-01T00:00:00Z");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn exact_file_layout() {
    let dir = tempdir("layout");
    let mut store = PositionStore::load(&dir).unwrap();
    let since = ts("2026-11-27T22:23:11.750760435Z");
    let last = ts("2026-11-27T22:23:12.750760435Z");
    store.advance(
        "0123456789ab",
        "web-1",
        Resume {
            since_ns: since,
            skip: 3,
        },
        1042,
        73311,
        last,
    );
    store.update("0123456789ab", |p| {
        p.last_read = Some(ts("2026-11-27T22:23:12.801Z"))
    });
    store.commit().unwrap();
    let expected = r#"{
  "0123456789ab": {
    "container_id": "0123456789ab",
    "since": "2026-11-27T22:23:11.750760435Z",
    "last_read": "2026-11-27T22:23:12.801000000Z",
    "last_log_time": "2026-11-27T22:23:12.750760435Z",
    "log_count": 1042,
    "bytes_read": 73311,
    "status": "active",
    "restart_count": 0,
    "since_ns": 1795818191750760435,
    "skip": 3,
    "last_log_time_ns": 1795818192750760435,
    "container_name": "web-1"
  }
}"#;
    assert_eq!(
        fs::read_to_string(dir.join(CONTAINER_POSITIONS_FILE)).unwrap(),
        expected
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn go_file_is_loaded_and_resumed() {
    let dir = tempdir("gofile");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(CONTAINER_POSITIONS_FILE), GO_FILE).unwrap();
    fs::write(
        dir.join("file_positions.json"),
        "{\n  \"/var/log/x.log\": {}\n}",
    )
    .unwrap();

    let mut store = PositionStore::load(&dir).unwrap();
    assert_eq!(store.len(), 3);
    assert!(!store.dirty());

    // Active (Go was killed or crashed while it ran): Go's `since`, as Go would resume.
    let active = store.get(FULL_ID).unwrap();
    assert!(active.is_go_record());
    assert_eq!(active.status, STATUS_ACTIVE);
    assert_eq!(active.since, Some(ts("2025-01-14T12:12:03.123456789Z")));
    assert_eq!(active.last_read, Some(ts("2025-01-14T12:45:10.5Z")));
    assert_eq!(active.last_log_time, Some(ts("2025-01-14T12:45:10.49871Z")));
    assert_eq!((active.log_count, active.bytes_read), (4212, 512340));
    assert_eq!(
        store.resume(FULL_ID),
        Some(Resume {
            since_ns: ts("2025-01-14T12:12:03.123456789Z"),
            skip: 0
        })
    );
    // Stopped: Go's `last_log_time`.
    assert_eq!(
        store.resume("a1b2c3d4e5f6"),
        Some(Resume {
            since_ns: ts("2025-01-14T12:44:59.87Z"),
            skip: 0
        })
    );
    assert_eq!(store.get("a1b2c3d4e5f6").unwrap().restart_count, 2);
    // Zero times: no position, captured like a new container.
    let zero = store.get("0badc0ffee00").unwrap();
    assert_eq!((zero.since, zero.last_log_time), (None, None));
    assert_eq!(store.resume("0badc0ffee00"), None);

    // Going on from the Go record keeps Go's counters and adds the exact resume point.
    let r = Resume {
        since_ns: ts("2025-01-14T12:50:00Z"),
        skip: 2,
    };
    store.advance(FULL_ID, "api", r, 8, 80, ts("2025-01-14T12:50:00.5Z"));
    store.set_status("a1b2c3d4e5f6", STATUS_RESTARTED);
    store.commit().unwrap();
    let again = PositionStore::load(&dir).unwrap();
    let p = again.get(FULL_ID).unwrap();
    assert!(!p.is_go_record());
    assert_eq!((p.log_count, p.bytes_read), (4220, 512420));
    assert_eq!(again.resume(FULL_ID), Some(r));
    assert_eq!(again.get("a1b2c3d4e5f6").unwrap().restart_count, 3);
    assert_eq!(again.get("a1b2c3d4e5f6").unwrap().status, STATUS_RESTARTED);
    assert_eq!(
        again.resume("a1b2c3d4e5f6"),
        Some(Resume {
            since_ns: ts("2025-01-14T12:44:59.87Z"),
            skip: 0
        })
    );
    // Go's own fields of the written file still parse as Go expects (RFC 3339 strings), and
    // `since` carries our resume point for a downgrade.
    let v: Value =
        serde_json::from_slice(&fs::read(dir.join(CONTAINER_POSITIONS_FILE)).unwrap()).unwrap();
    assert_eq!(v["3f2a9c1b7d4e"]["since"], "2025-01-14T12:50:00.000000000Z");
    assert_eq!(v["0badc0ffee00"]["since"], "0001-01-01T00:00:00Z");
    // The file monitor's positions are not ours: untouched.
    assert_eq!(
        fs::read_to_string(dir.join("file_positions.json")).unwrap(),
        "{\n  \"/var/log/x.log\": {}\n}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn go_null_map_and_sparse_records_load() {
    let dir = tempdir("null");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(CONTAINER_POSITIONS_FILE), "null").unwrap();
    assert!(PositionStore::load(&dir).unwrap().is_empty());
    fs::write(
        dir.join(CONTAINER_POSITIONS_FILE),
        r#"{"abc123abc123": {"since": "2025-01-14T12:00:00+00:00", "unknown_field": 1}}"#,
    )
    .unwrap();
    let store = PositionStore::load(&dir).unwrap();
    let p: &ContainerPosition = store.get("abc123abc123").unwrap();
    assert_eq!(p.container_id, "abc123abc123");
    assert_eq!(
        store.resume("abc123abc123"),
        Some(Resume {
            since_ns: ts("2025-01-14T12:00:00Z"),
            skip: 0
        })
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_file_is_an_error_naming_file_and_line() {
    let dir = tempdir("corrupt");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(CONTAINER_POSITIONS_FILE);
    let cases: [(&str, usize); 4] = [
        // Truncated mid-record (a Go write cut short).
        (
            "{\n  \"3f2a9c1b7d4e\": {\n    \"container_id\": \"3f2a9c1b7d4e\",\n    \"since\": ",
            4,
        ),
        // Not JSON at all.
        ("{\n  \"a\": {},\n  oops\n}", 3),
        // A bad time.
        ("{\n  \"a\": {\n    \"since\": \"yesterday\"\n  }\n}", 3),
        // Wrong shape: a list.
        ("[\n  1\n]", 1),
    ];
    for (text, line) in cases {
        fs::write(&path, text).unwrap();
        let err = PositionStore::load(&dir).unwrap_err();
        match &err {
            PositionsError::Corrupt {
                path: p, line: l, ..
            } => {
                assert_eq!(p, &path);
                assert_eq!(*l, line, "{text:?}: {err}");
            }
            other => panic!("{text:?}: expected Corrupt, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("line {line}")), "{msg}");
        // Untouched.
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
    }
    // An empty file (a non-fsynced write lost in a power cut) is corrupt too, not "no positions".
    fs::write(&path, "").unwrap();
    assert!(matches!(
        PositionStore::load(&dir),
        Err(PositionsError::Corrupt { .. })
    ));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn unreadable_file_is_an_error() {
    let dir = tempdir("unreadable");
    // A directory where the file should be: exists, cannot be read as a file.
    fs::create_dir_all(dir.join(CONTAINER_POSITIONS_FILE)).unwrap();
    let err = PositionStore::load(&dir).unwrap_err();
    assert!(matches!(err, PositionsError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains(CONTAINER_POSITIONS_FILE), "{err}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn commit_renames_a_complete_file_and_leaves_no_tmp() {
    let dir = tempdir("atomic");
    fs::create_dir_all(&dir).unwrap();
    // A leftover from a crash mid-commit: ignored by load, replaced by the next commit.
    fs::write(dir.join(CONTAINER_POSITIONS_TMP), "{\n  \"half").unwrap();
    let mut store = PositionStore::load(&dir).unwrap();
    assert!(store.is_empty());
    for i in 0..50u64 {
        let id = format!("{i:012x}");
        store.advance(
            &id,
            &format!("c{i}"),
            Resume {
                since_ns: 1_700_000_000_000_000_000 + i as i64,
                skip: i,
            },
            i,
            i * 10,
            1_700_000_000_000_000_000 + i as i64,
        );
        store.commit().unwrap();
        // The first commit has nothing to back up; each later one keeps the one before.
        let mut want = vec![CONTAINER_POSITIONS_FILE.to_string()];
        if i > 0 {
            want.push(CONTAINER_POSITIONS_BAK.to_string());
        }
        assert_eq!(names(&dir), want);
        let v: Value =
            serde_json::from_slice(&fs::read(dir.join(CONTAINER_POSITIONS_FILE)).unwrap()).unwrap();
        assert_eq!(v.as_object().unwrap().len() as u64, i + 1);
        if i > 0 {
            let bak: Value =
                serde_json::from_slice(&fs::read(dir.join(CONTAINER_POSITIONS_BAK)).unwrap())
                    .unwrap();
            assert_eq!(bak.as_object().unwrap().len() as u64, i);
        }
    }
    assert_eq!(store.commits(), 50);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn failed_commit_keeps_the_previous_file_and_stays_dirty() {
    let dir = tempdir("failed");
    let mut store = PositionStore::load(&dir).unwrap();
    store.set_status("aaaaaaaaaaaa", STATUS_STOPPED);
    store.commit().unwrap();
    let before = fs::read(dir.join(CONTAINER_POSITIONS_FILE)).unwrap();
    // The tmp path is taken by a directory: creating the tmp file fails.
    fs::create_dir(dir.join(CONTAINER_POSITIONS_TMP)).unwrap();
    store.set_status("aaaaaaaaaaaa", STATUS_ACTIVE);
    let err = store.commit().unwrap_err();
    assert!(matches!(err, PositionsError::Write { .. }), "{err:?}");
    assert!(err.to_string().contains(CONTAINER_POSITIONS_TMP), "{err}");
    assert!(store.dirty());
    assert_eq!(
        fs::read(dir.join(CONTAINER_POSITIONS_FILE)).unwrap(),
        before
    );
    fs::remove_dir(dir.join(CONTAINER_POSITIONS_TMP)).unwrap();
    store.commit().unwrap();
    assert!(!store.dirty());
    assert_eq!(
        PositionStore::load(&dir)
            .unwrap()
            .get("aaaaaaaaaaaa")
            .unwrap()
            .status,
        STATUS_ACTIVE
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn unchanged_store_is_not_rewritten() {
    let dir = tempdir("unchanged");
    let mut store = PositionStore::load(&dir).unwrap();
    // Nothing at all: no file, no directory.
    store.commit().unwrap();
    assert_eq!(store.commits(), 0);
    assert!(!dir.exists());

    let r = Resume {
        since_ns: 5_000_000_000,
        skip: 1,
    };
    store.advance("aaaaaaaaaaaa", "a", r, 1, 10, 5_000_000_000);
    store.commit().unwrap();
    assert_eq!(store.commits(), 1);
    let file = dir.join(CONTAINER_POSITIONS_FILE);
    let mtime = fs::metadata(&file).unwrap().modified().unwrap();
    let content = fs::read(&file).unwrap();

    // No-op changes: nothing delivered, same point; same status; removing an unknown id.
    store.advance("aaaaaaaaaaaa", "a", r, 0, 0, 5_000_000_000);
    store.set_status("aaaaaaaaaaaa", STATUS_ACTIVE);
    assert!(store.remove("bbbbbbbbbbbb").is_none());
    store.update("aaaaaaaaaaaa", |p| p.skip = 1);
    assert!(!store.dirty());
    std::thread::sleep(std::time::Duration::from_millis(20));
    store.commit().unwrap();
    assert_eq!(store.commits(), 1);
    assert_eq!(fs::metadata(&file).unwrap().modified().unwrap(), mtime);
    assert_eq!(fs::read(&file).unwrap(), content);

    // A loaded store is clean too.
    let mut loaded = PositionStore::load(&dir).unwrap();
    loaded.commit().unwrap();
    assert_eq!(loaded.commits(), 0);

    // A real change is written; removal too.
    loaded.remove("aaaaaaaaaaaa").unwrap();
    assert!(loaded.dirty());
    loaded.commit().unwrap();
    assert_eq!(loaded.commits(), 1);
    assert_eq!(fs::read_to_string(&file).unwrap(), "{}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn missing_directory_is_created() {
    let root = tempdir("mkdir");
    let dir = root.join("data").join("positions");
    let mut store = PositionStore::load(&dir).unwrap();
    assert!(store.is_empty());
    assert!(!dir.exists());
    store.set_status("abcabcabcabc", STATUS_STOPPED);
    store.commit().unwrap();
    assert!(dir.join(CONTAINER_POSITIONS_FILE).is_file());
    assert_eq!(PositionStore::load(&dir).unwrap().len(), 1);
    let _ = fs::remove_dir_all(&root);
}

// ---------------------------------------------------------------------------------------------
// Issue 12 (faults, state): the backup of the previous commit, and a bounded `skip`.

#[test]
fn corrupt_file_names_the_good_backup_and_how_to_restore_it() {
    let dir = tempdir("corrupt-bak");
    let mut store = PositionStore::load(&dir).unwrap();
    let resume = Resume {
        since_ns: 1_700_000_000_000_000_000,
        skip: 2,
    };
    store.advance(FULL_ID, "web", resume, 5, 50, resume.since_ns);
    store.commit().unwrap();
    store.advance(
        FULL_ID,
        "web",
        Resume { skip: 3, ..resume },
        1,
        10,
        resume.since_ns,
    );
    store.commit().unwrap();
    let path = dir.join(CONTAINER_POSITIONS_FILE);
    let bak = dir.join(CONTAINER_POSITIONS_BAK);
    // A torn or scribbled-over current file.
    fs::write(&path, "{\n  \"3f2a9c1b7d4e\": {\n    \"skip\": ").unwrap();
    let msg = PositionStore::load(&dir).unwrap_err().to_string();
    let restore = format!("mv {} {}", bak.display(), path.display());
    assert!(msg.contains(&restore), "{msg}");
    assert!(msg.contains("1 containers"), "{msg}");
    // Following the advice resumes from the previous commit.
    fs::rename(&bak, &path).unwrap();
    let store = PositionStore::load(&dir).unwrap();
    assert_eq!(store.resume(FULL_ID), Some(resume));

    // No backup, or a corrupt one: the message says how to start over.
    fs::write(&path, "nonsense").unwrap();
    let msg = PositionStore::load(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("There is no backup") && msg.contains("To start over"),
        "{msg}"
    );
    fs::write(&bak, "[").unwrap();
    let msg = PositionStore::load(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("is corrupt too") && msg.contains("To start over"),
        "{msg}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_skip_over_the_bound_is_corrupt_not_an_allocation() {
    let dir = tempdir("huge-skip");
    fs::create_dir_all(&dir).unwrap();
    let record = |skip: u64| {
        format!(
            "{{\n  \"3f2a9c1b7d4e\": {{\n    \"since_ns\": 1700000000000000000,\n    \
             \"skip\": {skip}\n  }}\n}}"
        )
    };
    fs::write(dir.join(CONTAINER_POSITIONS_FILE), record(u64::MAX)).unwrap();
    let err = PositionStore::load(&dir).unwrap_err();
    let msg = err.to_string();
    // serde_json places a field's own error at the end of its record.
    assert!(
        matches!(err, PositionsError::Corrupt { line: 5, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("18446744073709551615") && msg.contains("limit"),
        "{msg}"
    );
    fs::write(dir.join(CONTAINER_POSITIONS_FILE), record(MAX_SKIP)).unwrap();
    let store = PositionStore::load(&dir).unwrap();
    assert_eq!(store.resume("3f2a9c1b7d4e").unwrap().skip, MAX_SKIP);
    let _ = fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Issue 9, section 4: removed containers pruned after a grace period; an in-memory store.

#[test]
fn removed_containers_are_pruned_after_the_grace_period_only() {
    use log_capturer::state::positions::STATUS_REMOVED;
    use std::time::Duration;

    let dir = tempdir("prune");
    let mut store = PositionStore::load(&dir).unwrap();
    let resume = Resume {
        since_ns: ts("2026-11-29T10:00:00Z"),
        skip: 1,
    };
    let ids: Vec<String> = (0..40).map(|i| format!("{i:012x}")).collect();
    for id in &ids {
        store.advance(id, "c", resume, 1, 10, resume.since_ns);
    }
    store.advance("keptkeptkept", "quiet", resume, 1, 10, resume.since_ns);
    store.commit().unwrap();

    // A removal of a container without a record creates none.
    store.mark_removed("nonexistent0");
    assert!(store.get("nonexistent0").is_none());
    assert!(!store.dirty());

    for id in &ids {
        store.mark_removed(id);
    }
    assert!(store.dirty());
    assert_eq!(store.get(&ids[0]).unwrap().status, STATUS_REMOVED);
    store.commit().unwrap();

    // Within the grace period nothing goes, and nothing is rewritten.
    assert_eq!(store.prune_removed(Duration::from_secs(3600)), 0);
    assert!(!store.dirty());
    // Past it, the 40 removed records go; the record of a container that exists stays,
    // however old.
    assert_eq!(store.prune_removed(Duration::ZERO), 40);
    assert!(store.dirty());
    store.commit().unwrap();
    let reloaded = PositionStore::load(&dir).unwrap();
    assert_eq!(reloaded.len(), 1);
    assert!(reloaded.get("keptkeptkept").is_some());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn in_memory_store_writes_nothing() {
    let mut store = PositionStore::in_memory();
    assert!(!store.persists());
    let resume = Resume {
        since_ns: ts("2026-11-29T10:00:00Z"),
        skip: 0,
    };
    store.advance(FULL_ID, "web", resume, 3, 30, resume.since_ns);
    assert_eq!(store.resume(FULL_ID), Some(resume));
    store.commit().unwrap();
    assert!(!store.dirty());
    assert_eq!(store.commits(), 0, "nothing written");
}

#[test]
fn records_of_containers_gone_while_down_are_marked_removed() {
    use log_capturer::state::positions::STATUS_REMOVED;

    let mut store = PositionStore::in_memory();
    let resume = Resume {
        since_ns: ts("2026-11-29T10:00:00Z"),
        skip: 0,
    };
    store.advance(FULL_ID, "here", resume, 1, 1, resume.since_ns);
    store.advance("0badc0ffee00", "gone", resume, 1, 1, resume.since_ns);
    store.commit().unwrap();
    assert_eq!(store.mark_missing_removed([FULL_ID, "ffffffffffff"]), 1);
    assert!(store.dirty());
    assert_eq!(store.get("0badc0ffee00").unwrap().status, STATUS_REMOVED);
    assert_eq!(store.get(FULL_ID).unwrap().status, STATUS_ACTIVE);
    // Already marked: nothing changes.
    store.commit().unwrap();
    assert_eq!(store.mark_missing_removed([FULL_ID]), 0);
    assert!(!store.dirty());
}

/// File records: a path gone is marked (`gone_since`, written to the file), never created
/// for a path without a record; a new checkpoint of the path clears the mark; pruning drops
/// a marked record old enough only while its path does not exist.
#[test]
fn file_records_of_paths_gone_are_marked_then_pruned_unless_the_path_exists() {
    use log_capturer::state::file_positions::FileCheckpoint;
    use std::sync::Arc;
    use std::time::Duration;
    let dir = tempdir("files-gone");
    fs::create_dir_all(&dir).unwrap();
    let (present, gone) = (dir.join("present.log"), dir.join("gone.log"));
    fs::write(&present, "x\n").unwrap();
    let key = |p: &Path| -> Arc<str> { Arc::from(p.display().to_string()) };
    let at = |p: &Path| FileCheckpoint {
        offset: 2,
        size: 2,
        lines: 1,
        bytes: 1,
        gone: false,
        ..FileCheckpoint::gone(key(p), Arc::from("id"))
    };
    let mut store = PositionStore::load(&dir).unwrap();
    store.load_files().unwrap();
    store.advance_file(&at(&present));
    store.advance_file(&at(&gone));
    store.commit().unwrap();
    let never = dir.join("never.log");
    for p in [&present, &gone, &never] {
        store.advance_file(&FileCheckpoint::gone(key(p), Arc::from("id")));
    }
    assert_eq!(store.files().len(), 2, "no record made for a path gone");
    store.commit().unwrap();
    let v: Value =
        serde_json::from_slice(&fs::read(dir.join("file_positions.json")).unwrap()).unwrap();
    assert!(v[&*key(&gone)]["gone_since"].is_string(), "{v}");
    // Young marks stay; old ones go, but only where the path does not exist.
    assert_eq!(store.prune_gone_files(Duration::from_secs(3600)), 0);
    assert_eq!(store.prune_gone_files(Duration::ZERO), 1);
    let left: Vec<&String> = store.files().keys().collect();
    assert_eq!(left, [&present.display().to_string()]);
    // The path read again: the mark goes, and with it any pruning.
    store.advance_file(&at(&present));
    assert_eq!(store.files()[&*key(&present)].gone_since, None);
    assert_eq!(store.files()[&*key(&present)].log_count, 2);
    store.commit().unwrap();
    let again = PositionStore::load(&dir).and_then(|mut s| {
        s.load_files()?;
        Ok(s)
    });
    let again = again.unwrap();
    assert_eq!(again.files().len(), 1);
    assert_eq!(again.files()[&*key(&present)].gone_since, None);
    let _ = fs::remove_dir_all(&dir);
}
