// Seeds on which the simulation finds a violation in today's code, and what it finds: open
// bugs (see `tests/seeds.rs`). Generated from `tandem-sim --seeds 10000`; shrink it as they
// are fixed.
const KNOWN: &[(u64, &str)] = &[
];
