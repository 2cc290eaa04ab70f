//! The peer wire protocol (part 2). Empty for now: part 1 has no peer traffic.
