//! Placement of relay sessions on workers (filled in by the relay work).
