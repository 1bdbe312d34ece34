//! hydra-lab
