// Seeds on which the simulation finds a violation in today's code, and what it finds: open
// bugs (see `tests/seeds.rs`). Generated from `tandem-sim --seeds 10000`; shrink it as they
// are fixed.
const KNOWN: &[(u64, &str)] = &[
    (3065, "began again"),
    (5547, "two copies of job"),
    (8015, "is stranded in"),
    (9294, "is stranded in"),
    (9311, "is recorded running as copy"),
];
