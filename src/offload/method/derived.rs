//! The Gram matrix of the vectors a method derives itself ([`Needs::derived`]): one more read
//! of the operands after the other facts, [`CHUNK`] values of each operand and derived vector
//! at a time.

use super::{add_gram, chunks, each_range, mirror, Scratch};
use crate::error::{Error, Result};
use crate::model::tensor::method::{Facts, Needs};
use crate::model::Merged;
use crate::reduce::CHUNK;

/// `derived_gram` of `facts` (whose other facts are computed) over the `n` elements of `m`.
pub(super) fn gram(
    m: &Merged,
    needs: &Needs,
    facts: &Facts,
    n: usize,
    scratch: &mut Scratch,
) -> Result<Vec<f64>> {
    let k = needs.derived;
    let node = m.method_node().ok_or_else(|| {
        Error::InvalidInput(format!("`{}`: derived vectors of no method", m.key()))
    })?;
    let mut g = vec![0f64; k * k];
    if n == 0 {
        return Ok(g);
    }
    let align = needs.align.max(1);
    // Whole runs of `align` elements, as the method derives them.
    let chunk = (CHUNK / align * align).max(align).min(n);
    let used: Vec<usize> = (0..=node.inputs.len()).collect();
    let mut vals = vec![Vec::new(); k];
    each_range(m, &used, chunks(n, chunk), scratch, |range, views| {
        let (at, len) = (range.start, range.len());
        for v in vals.iter_mut() {
            v.clear();
            v.resize(len, 0f32);
        }
        node.op.derive(facts, at, views, &mut vals);
        let rows: Vec<&[f32]> = vals.iter().map(Vec::as_slice).collect();
        add_gram(&mut g, &rows);
        true
    })?;
    Ok(mirror(g, k))
}
