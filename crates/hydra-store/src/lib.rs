//! hydra-store: durable state (engines being written).
