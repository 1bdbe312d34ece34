//! hydra-client
