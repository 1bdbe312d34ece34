//! Options shared by every command that talks to the server (being built).
