//! The on-disk cache of compiled modules trusts nothing it did not write: it lives in a
//! private folder, and a compiled file that does not carry the cache's keyed tag is
//! compiled afresh, never loaded.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pushdown_storage_node::{NodeOptions, StorageNode};

fn open(data: &Path, cache: &Path) -> StorageNode {
    let mut options = NodeOptions::default();
    options.sandbox.cache_dir = Some(cache.to_path_buf());
    StorageNode::open(data, options).expect("the node opens")
}

fn compiled_files(cache: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect()
}

#[test]
fn a_tampered_compiled_module_is_recompiled_and_the_folder_kept_private() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("t.csv"), "a\n1\n").unwrap();
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("modules");
    drop(open(data.path(), &cache));
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the cache folder is created private");
    let files = compiled_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    let good = std::fs::read(&files[0]).unwrap();
    // Another user's write, or a corrupted file: one byte of the compiled code changed.
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0xff;
    std::fs::write(&files[0], &bad).unwrap();
    // A folder others may write to is made private again before it is used.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let node = open(data.path(), &cache);
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    // The tampered file was not loaded: the module was compiled again and the file
    // rewritten with a valid tag.
    let now = std::fs::read(&files[0]).unwrap();
    assert_ne!(now, bad);
    assert_eq!(now.len(), good.len());
    let table = node.table("t").unwrap().unwrap();
    assert_eq!(table.files.len(), 1);
}
