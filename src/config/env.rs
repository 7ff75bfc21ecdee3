//! `${NAME}` and `${NAME:-default}` references to environment variables in setting values.

/// Replaces every `${NAME}` (or `${NAME:-default}`) in `text` with the value `lookup` gives.
/// `$$` stands for a literal `$`. Errors name the variable that is missing or malformed.
pub fn expand_env(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut expanded = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        expanded.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            expanded.push('$');
            rest = stripped;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            expanded.push('$');
            rest = after;
            continue;
        };
        let Some(close) = body.find('}') else {
            return Err(format!("unclosed '${{' in \"{text}\": write ${{NAME}} or $$ for a literal '$'"));
        };
        let reference = &body[..close];
        let (name, default) = match reference.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (reference, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("'${{{reference}}}' is not a valid environment variable reference"));
        }
        match (lookup(name), default) {
            (Some(value), _) => expanded.push_str(&value),
            (None, Some(default)) => expanded.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (referenced as ${{{name}}}; set it or write ${{{name}:-default}})"
                ));
            }
        }
        rest = &body[close + 1..];
    }
    expanded.push_str(rest);
    Ok(expanded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "HOST").then(|| "db.local".to_string())
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        assert_eq!(expand_env("mongodb://${HOST}:27017", &lookup).unwrap(), "mongodb://db.local:27017");
        assert_eq!(expand_env("${PORT:-4000}", &lookup).unwrap(), "4000");
        assert_eq!(expand_env("cost: $$5 and $x", &lookup).unwrap(), "cost: $5 and $x");
    }

    #[test]
    fn missing_and_malformed_references_are_named() {
        assert!(expand_env("${MONGODB_URI}", &lookup).unwrap_err().contains("MONGODB_URI is not set"));
        assert!(expand_env("${bad name}", &lookup).unwrap_err().contains("not a valid"));
        assert!(expand_env("${HOST", &lookup).unwrap_err().contains("unclosed"));
    }

    proptest! {
        #[test]
        fn never_panics_and_leaves_plain_text_alone(text in ".*") {
            let result = expand_env(&text, &lookup);
            if !text.contains('$') {
                prop_assert_eq!(result.unwrap(), text);
            }
        }
    }
}
