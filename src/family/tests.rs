//! The family table against the reference fixtures and its own consistency.

use std::collections::BTreeMap;

use super::*;
use crate::model::{ComponentKind, TensorInfo};
use crate::synthetic::expand::expand;
use crate::testutil::{self, FAMILY_FIXTURES};

/// Differences between two component maps, for messages (empty when equal).
fn diff(got: &BTreeMap<String, TensorInfo>, want: &BTreeMap<String, TensorInfo>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => out.push(format!("missing {k} {:?} {}", w.shape, w.dtype)),
            Some(g) if g != w => out.push(format!(
                "{k}: got {:?} {}, want {:?} {}",
                g.shape, g.dtype, w.shape, w.dtype
            )),
            Some(_) => {}
        }
    }
    for (k, g) in got {
        if !want.contains_key(k) {
            out.push(format!("extra {k} {:?} {}", g.shape, g.dtype));
        }
    }
    out
}

#[test]
fn synthetic_models_are_the_reference_components() {
    let mut problems = Vec::new();
    for (name, arch, variant) in FAMILY_FIXTURES {
        let (a, v) = variant_named(variant).unwrap();
        assert_eq!(a, arch, "{variant}");
        let want = testutil::component_shapes(name);
        let got = expand(v.full);
        for kind in [
            ComponentKind::Model,
            ComponentKind::Clip,
            ComponentKind::Vae,
        ] {
            let d = diff(
                got.get(kind).unwrap_or(&BTreeMap::new()),
                want.get(kind).unwrap(),
            );
            if !d.is_empty() {
                problems.push(format!("{name}/{kind}: {} difference(s)", d.len()));
                problems.extend(d.into_iter().take(12).map(|l| format!("  {l}")));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn table_is_in_arch_order_and_names_are_unique() {
    let mut names = std::collections::BTreeSet::new();
    for (i, f) in Family::all().iter().enumerate() {
        assert_eq!(f.arch, Arch::ALL[i], "{}", f.name);
        assert_eq!(f.arch.family().name, f.name);
        let all = std::iter::once(f.name)
            .chain(f.aliases.iter().copied())
            .chain(
                f.variants
                    .iter()
                    .flat_map(|v| std::iter::once(v.name).chain(v.aliases.iter().copied())),
            );
        // A family may share its name with one of its variants (sd15); nothing else repeats.
        let mut own = std::collections::BTreeSet::new();
        for n in all {
            let key = normalise(n);
            let shared = normalise(f.name) == key && own.contains(&key);
            assert!(
                own.insert(key.clone()) || shared,
                "`{n}` is used twice in {}",
                f.name
            );
        }
        for key in own {
            assert!(names.insert(key.clone()), "`{key}` names two families");
        }
        assert!(!f.tells.is_empty(), "{}: no tells", f.name);
        assert!(
            matches!(f.tells[0], Tell::Key(_) | Tell::Either(_)),
            "{}: the first tell names a key that must be present",
            f.name
        );
        for p in f.placed {
            assert!(
                f.params.iter().any(|q| q.name == *p),
                "{}: placed {p} is no param",
                f.name
            );
        }
    }
}

#[test]
fn names_find_families_and_variants() {
    assert_eq!(family_named("Wan2.1").unwrap().arch, Arch::Wan21);
    assert_eq!(family_named("wan21-14b").unwrap().arch, Arch::Wan21);
    assert_eq!(family_named("SD3.5").unwrap().arch, Arch::Sd3);
    let (arch, v) = variant_named("wan22-14b").unwrap();
    assert_eq!((arch, v.name), (Arch::Wan21, "wan21-14b"));
    let (arch, v) = variant_named("wan22").unwrap();
    assert_eq!((arch, v.name), (Arch::Wan22, "wan22-5b"));
    let err = variant_named("wan23").unwrap_err().to_string();
    assert!(
        err.contains("`wan23` is not a model name") && err.contains("wan21-1.3b"),
        "{err}"
    );
}
