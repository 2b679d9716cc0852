//! The Redis backend (feature `redis`): the same modes and paths across
//! processes and machines. Work in progress (issue 7).
