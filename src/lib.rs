//! placeholder: the Turnpike filter
