//! Integration tests of the lab itself: isolation, links, drops and the stand-ins.

mod topology;
