//! Kubernetes glue shared by the reconcilers: conditions today; apply, ownership and labels as
//! the controller grows. Pure helpers first, so `dev` mode and the controller share them.

pub mod conditions;
