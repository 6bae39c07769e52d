//! (placeholder; being built)
