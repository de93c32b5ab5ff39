//! Request bodies of the control APIs.

/// A JSON request body must be an object. serde's derived `Deserialize`
/// also accepts a JSON array of a struct's fields in order, which no client
/// means to send; refuse it (and anything else) with a clear message.
pub fn require_json_object(body: &[u8]) -> Result<(), &'static str> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        Some(_) => Err("the request body must be a JSON object"),
        None => Err("empty request body: a JSON object is required"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects_pass() {
        assert!(require_json_object(b" \n{\"a\":1}").is_ok());
        assert!(require_json_object(b"[1,2]").is_err());
        assert!(require_json_object(b"\"x\"").is_err());
        assert!(require_json_object(b"  ").is_err());
    }
}
