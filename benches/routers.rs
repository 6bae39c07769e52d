//! Apply + read-back round trip per router (being built).
fn main() {}
