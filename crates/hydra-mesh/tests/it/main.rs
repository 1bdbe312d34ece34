//! Integration tests of the mesh: real UDP sockets on 127.0.0.1.

mod mesh;
