//! The one reader against files downloaded from anywhere: thousands of mutated checkpoints
//! (headers, offsets, shapes, dtypes, lengths, truncations) must each give `Ok` or a clear error
//! from every entry point that reads — never a panic, and never an allocation sized by what the
//! file merely claims (checked with a counting allocator: nothing larger than the file itself).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::Device;
use checkpoint_save::synthetic::{self, SyntheticOptions};
use checkpoint_save::{inspect, load_checkpoint, load_tensors, save_to_path, Arch, SaveOptions};

/// The system allocator, remembering the largest single request.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// xorshift64: deterministic mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Numbers a hostile header might hold.
const NUMBERS: [&str; 10] = [
    "0",
    "1",
    "3",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "99999999999999999999999",
    "1e30",
    "7",
];
const DTYPES: [&str; 8] = [
    "F32", "F4", "F6_E2M3", "BOOL", "I64", "F8_E5M2", "X99", "f32",
];

/// One mutation of `orig`, whose JSON header is `orig[8..8 + n]`.
fn mutate(orig: &[u8], n: usize, rng: &mut Rng) -> Vec<u8> {
    let mut b = orig.to_vec();
    let header = std::str::from_utf8(&orig[8..8 + n]).unwrap();
    match rng.below(9) {
        // Flip bytes of the header.
        0 => {
            for _ in 0..1 + rng.below(4) {
                let i = 8 + rng.below(n);
                b[i] ^= 1 << rng.below(8);
            }
        }
        // Replace one number of the header (offsets, shape dims) with a hostile one.
        1 | 2 => {
            let digits: Vec<usize> = header
                .char_indices()
                .filter(|(i, c)| {
                    c.is_ascii_digit() && (*i == 0 || !header.as_bytes()[i - 1].is_ascii_digit())
                })
                .map(|(i, _)| i)
                .collect();
            let at = digits[rng.below(digits.len())];
            let end = at
                + header[at..]
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(0);
            let new = format!(
                "{}{}{}",
                &header[..at],
                NUMBERS[rng.below(NUMBERS.len())],
                &header[end..]
            );
            b = rebuild(&new, &orig[8 + n..]);
        }
        // Replace one dtype.
        3 => {
            let at: Vec<usize> = header
                .match_indices("\"dtype\":\"")
                .map(|(i, _)| i + 9)
                .collect();
            let i = at[rng.below(at.len())];
            let end = i + header[i..].find('"').unwrap();
            let new = format!(
                "{}{}{}",
                &header[..i],
                DTYPES[rng.below(DTYPES.len())],
                &header[end..]
            );
            b = rebuild(&new, &orig[8 + n..]);
        }
        // Truncate anywhere.
        4 => b.truncate(rng.below(orig.len())),
        // Extend with garbage.
        5 => b.extend((0..1 + rng.below(64)).map(|_| rng.next() as u8)),
        // A length prefix that lies.
        6 => {
            let lie = match rng.below(4) {
                0 => u64::MAX,
                1 => 100_000_000,
                2 => orig.len() as u64,
                _ => (n as u64)
                    .wrapping_add(rng.below(64) as u64)
                    .wrapping_sub(32),
            };
            b[..8].copy_from_slice(&lie.to_le_bytes());
        }
        // Cut the JSON short, keeping the length honest.
        7 => {
            let keep = rng.below(n);
            b = rebuild(&header[..keep], &orig[8 + n..]);
        }
        // Drop or duplicate a key.
        _ => {
            let dup = header.replacen(
                "{\"",
                "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"",
                1,
            );
            b = rebuild(&dup, &orig[8 + n..]);
        }
    }
    b
}

fn rebuild(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn read_everything(path: &Path) {
    let _ = inspect(path);
    let _ = load_tensors(path, &Device::Cpu);
    let _ = load_checkpoint(path, &Device::Cpu, None);
}

#[test]
fn mutated_files_give_errors_not_panics_nor_claimed_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = [(Arch::Sd15, 2usize), (Arch::Sdxl, 1)];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut checked = 0;
    for (arch, max_dim) in seeds {
        let c = synthetic::build(
            &SyntheticOptions::new(arch).with_max_dim(max_dim),
            &Device::Cpu,
        )
        .unwrap();
        let orig_path = dir.path().join(format!("{arch}.safetensors"));
        let mut opts = SaveOptions::default();
        opts.writer.backend = checkpoint_save::Backend::Pwrite;
        save_to_path(&c, &orig_path, &opts).unwrap();
        let orig = std::fs::read(&orig_path).unwrap();
        let n = u64::from_le_bytes(orig[..8].try_into().unwrap()) as usize;
        let path = dir.path().join("mutant.safetensors");
        for _ in 0..400 {
            let bytes = mutate(&orig, n, &mut rng);
            std::fs::write(&path, &bytes).unwrap();
            LARGEST.store(0, Ordering::Relaxed);
            let outcome = std::panic::catch_unwind(|| read_everything(&path));
            let largest = LARGEST.load(Ordering::Relaxed);
            if outcome.is_err() {
                let kept = dir.path().join("panicked.safetensors");
                std::fs::copy(&path, &kept).unwrap();
                panic!(
                    "a reader panicked on a mutated file (kept as {})",
                    kept.display()
                );
            }
            // The reader may hold the header and a tensor (each within the file), candle a copy
            // of a tensor; nothing sized by a claim.
            let bound = 3 * bytes.len() + (1 << 20);
            assert!(
                largest <= bound,
                "allocated {largest} bytes for a {}-byte file",
                bytes.len()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 800);
}
