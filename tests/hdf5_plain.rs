//! The dataset cache's files are plain HDF5: read here through the HDF5 C API directly (not the `hdf5`
//! crate qstore writes with), their datasets give back the values `Store::features` computes. In a test
//! binary of its own: the C library is not thread-safe, and here nothing else calls it concurrently.
#![cfg(feature = "hdf5")]

use std::ffi::CString;
use std::path::Path;

use hdf5_sys::h5::hsize_t;
use hdf5_sys::h5d::{H5Dclose, H5Dget_space, H5Dopen2, H5Dread};
use hdf5_sys::h5f::{H5F_ACC_RDONLY, H5Fclose, H5Fopen};
use hdf5_sys::h5i::hid_t;
use hdf5_sys::h5p::H5P_DEFAULT;
use hdf5_sys::h5s::{H5S_ALL, H5Sclose, H5Sget_simple_extent_dims};
use hdf5_sys::h5t::{H5T_NATIVE_FLOAT, H5T_NATIVE_UINT32, H5T_NATIVE_UINT64};
use qstore::dataset::{DatasetMeta, DiskDatasetCache};
use qstore::{Engine, Freq, Universe, import};

/// Reads a whole dataset of `T` (whose HDF5 memory type is `mem`) and its dimensions.
fn read<T: Default + Clone>(file: hid_t, name: &str, mem: hid_t) -> (Vec<T>, Vec<usize>) {
    let cname = CString::new(name).unwrap();
    // SAFETY: `file` is an open file id; `cname` is a NUL-terminated string that outlives the call; every id
    // opened here is closed before returning; `buf` holds exactly the dataset's element count of `T`, whose
    // size matches `mem` (f32/u32/u64 native types), so H5Dread writes within it.
    unsafe {
        let ds = H5Dopen2(file, cname.as_ptr(), H5P_DEFAULT);
        assert!(ds >= 0, "no dataset {name}");
        let space = H5Dget_space(ds);
        let mut dims = [0 as hsize_t; 2];
        let rank = H5Sget_simple_extent_dims(space, dims.as_mut_ptr(), std::ptr::null_mut());
        assert!((1..=2).contains(&rank), "{name}: rank {rank}");
        let dims: Vec<usize> = dims[..rank as usize].iter().map(|&d| d as usize).collect();
        let mut buf = vec![T::default(); dims.iter().product()];
        let status = H5Dread(
            ds,
            mem,
            H5S_ALL,
            H5S_ALL,
            H5P_DEFAULT,
            buf.as_mut_ptr().cast(),
        );
        assert!(status >= 0, "reading {name}");
        H5Sclose(space);
        H5Dclose(ds);
        (buf, dims)
    }
}

fn open(path: &Path) -> hid_t {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: `c` is NUL-terminated and outlives the call; the id is checked and closed by the caller.
    let id = unsafe { H5Fopen(c.as_ptr(), H5F_ACC_RDONLY, H5P_DEFAULT) };
    assert!(id >= 0, "opening {}", path.display());
    id
}

#[test]
fn dataset_files_are_plain_hdf5() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample"));
    let csv = import::CsvSource::open(fixtures, Default::default()).unwrap();
    let root = dir.path().join("s");
    import::import(
        &csv,
        &root,
        &Default::default(),
        &Default::default(),
        &|_| {},
    )
    .unwrap();
    let s = Engine::open(&root).unwrap();
    let exprs = ["Mean($close, 5)", "$close", "Ref($close, -1)"];
    let cache = DiskDatasetCache::for_store(&root, false).unwrap();
    cache
        .warm(&s, Universe::Market("all"), &exprs, Freq::DAY, false)
        .unwrap();
    let (meta_path, meta) = cache.entries().unwrap().remove(0);
    let meta: DatasetMeta = meta.unwrap();
    let key = meta_path.file_stem().unwrap().to_str().unwrap();
    let data = cache.dir().join(format!("{key}.{}.data", meta.generation));
    let index = cache.dir().join(format!("{key}.{}.index", meta.generation));

    let f = open(&data);
    let (values, dims) = read::<f32>(f, "values", *H5T_NATIVE_FLOAT);
    let (codes, _) = read::<u32>(f, "instrument", *H5T_NATIVE_UINT32);
    let (rows, _) = read::<u32>(f, "row", *H5T_NATIVE_UINT32);
    // SAFETY: `f` was opened above and every object in it is closed.
    unsafe { H5Fclose(f) };
    let f = open(&index);
    let (start, _) = read::<u64>(f, "start", *H5T_NATIVE_UINT64);
    let (end, _) = read::<u64>(f, "end", *H5T_NATIVE_UINT64);
    // SAFETY: as above.
    unsafe { H5Fclose(f) };

    let want = s
        .features(Universe::Market("all"), &meta.fields, None, None, Freq::DAY)
        .unwrap();
    assert_eq!(dims, [want.len(), meta.fields.len()]);
    assert_eq!(start.len(), meta.calendar_len);
    assert_eq!(*end.last().unwrap() as usize, want.len());
    // Every stored row is the computed row of its (instrument, calendar row), and the index's range of each
    // calendar row holds exactly that row's entries.
    for k in 0..want.len() {
        let inst = &meta.instruments[codes[k] as usize];
        let r = want.rows_of(inst);
        let at = (r.start..r.end)
            .find(|&i| want.calendar_row(i) == rows[k] as usize)
            .unwrap();
        let got = &values[k * dims[1]..(k + 1) * dims[1]];
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(got), bits(want.row(at)), "row {k}");
        let c = rows[k] as usize;
        assert!(start[c] as usize <= k && k < end[c] as usize);
    }
}
