//! hydra-server
