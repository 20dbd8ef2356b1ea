//! Unit tests of the quantized layouts.
