//! End-to-end tests of the virtual RM against a real s2-kit CemSession.
