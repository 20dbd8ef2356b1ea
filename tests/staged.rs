//! Staged saves (the checkpointer's snapshot path): the image written with direct I/O (ext4, and
//! tmpfs on recent kernels) plus an ordinary write of the unaligned tail holds the same tensors
//! and metadata as a streamed save, and a reused image gives the same file.

use std::path::Path;

use candle_core::Device;
use checkpoint_save::arch::Arch;
use checkpoint_save::dtype::TargetDtype;
use checkpoint_save::plan::ComponentDtypes;
use checkpoint_save::save::{save_to_path, stage, write_staged_to_path, SaveOptions};
use checkpoint_save::synthetic::{self, SyntheticOptions};
use safetensors::SafeTensors;

fn same_content(a: &Path, b: &Path) {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (sa, sb) = (
        SafeTensors::deserialize(&a).unwrap(),
        SafeTensors::deserialize(&b).unwrap(),
    );
    let (ma, mb) = (
        SafeTensors::read_metadata(&a).unwrap().1,
        SafeTensors::read_metadata(&b).unwrap().1,
    );
    assert_eq!(ma.metadata(), mb.metadata());
    let mut names = sa.names();
    names.sort();
    let mut other = sb.names();
    other.sort();
    assert_eq!(names, other);
    for n in names {
        let (x, y) = (sa.tensor(n).unwrap(), sb.tensor(n).unwrap());
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{n}");
        assert!(x.data() == y.data(), "{n}: bytes differ");
    }
}

#[test]
fn staged_saves_equal_streamed_saves_on_disk_and_tmpfs() {
    let components = synthetic::build(
        &SyntheticOptions::new(Arch::Sdxl).with_max_dim(300),
        &Device::Cpu,
    )
    .unwrap();
    let disk = tempfile::tempdir().unwrap();
    let shm = Path::new("/dev/shm").join(format!("cs-staged-{}", std::process::id()));
    std::fs::create_dir_all(&shm).unwrap();
    let opts = SaveOptions {
        dtypes: ComponentDtypes {
            model: TargetDtype::F16,
            clip: TargetDtype::BF16,
            ..Default::default()
        },
        ..Default::default()
    };
    let streamed = disk.path().join("streamed.safetensors");
    save_to_path(&components, &streamed, &opts).unwrap();
    let mut reuse = None;
    for (i, dir) in [disk.path(), shm.as_path(), disk.path()]
        .into_iter()
        .enumerate()
    {
        let staged = stage(&components, &opts, "streamed", reuse.take()).unwrap();
        let path = dir.join(format!("staged-{i}.safetensors"));
        let saved = write_staged_to_path(&staged, &path, None).unwrap();
        assert_eq!(saved.bytes, std::fs::metadata(&path).unwrap().len());
        // The data section starts 4096-aligned (direct I/O), the header padded with spaces.
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!((n + 8) % 4096, 0);
        same_content(&streamed, &path);
        // Refuses to replace what exists.
        assert!(write_staged_to_path(&staged, &path, None).is_err());
        reuse = Some(staged.into_image());
    }
    let _ = std::fs::remove_dir_all(&shm);
}

#[test]
fn direct_io_backend_writes_the_same_tensors() {
    use checkpoint_save::save::WriterChoice;
    use checkpoint_save::writer::{Backend, EngineOptions};
    let components = synthetic::build(
        &SyntheticOptions::new(Arch::Sd15).with_max_dim(200),
        &Device::Cpu,
    )
    .unwrap();
    let disk = tempfile::tempdir().unwrap();
    let shm = Path::new("/dev/shm").join(format!("cs-direct-{}", std::process::id()));
    std::fs::create_dir_all(&shm).unwrap();
    let opts = SaveOptions {
        dtypes: ComponentDtypes::all(TargetDtype::F16),
        ..Default::default()
    };
    let streamed = disk.path().join("streamed.safetensors");
    save_to_path(&components, &streamed, &opts).unwrap();
    for (i, dir) in [disk.path(), shm.as_path()].into_iter().enumerate() {
        // Units smaller than, between and above the 8 MiB direct write (the model is ~96 MB).
        for chunk_size in [4096, 1 << 16, (12 << 20) + 4096, 32 << 20] {
            let direct = SaveOptions {
                writer: WriterChoice::Parallel(EngineOptions {
                    backend: Backend::Direct,
                    chunk_size,
                    ..Default::default()
                }),
                ..opts.clone()
            };
            let path = dir.join(format!("direct-{i}-{chunk_size}.safetensors"));
            save_to_path(&components, &path, &direct).unwrap();
            same_content(&streamed, &path);
        }
    }
    let _ = std::fs::remove_dir_all(&shm);
}
