//! Wording shared by the agent's and the builder's messages.

use std::borrow::Borrow;

/// `items` joined by `sep`, or `none` when there are none, so that a list
/// in a message never reads as blank.
pub fn join_or<S: Borrow<str>>(items: &[S], sep: &str, none: &str) -> String {
    if items.is_empty() {
        none.to_owned()
    } else {
        items.join(sep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_is_named() {
        assert_eq!(join_or(&["a", "b"], ", ", "none"), "a, b");
        assert_eq!(join_or::<&str>(&[], ", ", "none"), "none");
    }
}
