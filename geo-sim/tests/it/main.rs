//! geo-sim's command line, run as a user runs it.

mod check;
mod run;
