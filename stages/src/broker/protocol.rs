//! The broker's line protocol: parsing one command line, validating events
//! and names. Pure functions, no I/O.

use serde_json::Value;

/// Longest topic or subscriber name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest event id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Largest `window <n>`.
pub const MAX_WINDOW: usize = 10_000;
/// Highest event priority (lowest is 0).
pub const MAX_PRIORITY: u8 = 9;

/// An event as a publisher sends it: `{"id": ..., "priority": 0-9, "msg": ...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventInput {
    /// The publisher's id for the event; subscribers ack by it.
    pub id: String,
    /// 0 (lowest) to 9 (highest): higher is delivered first.
    pub priority: u8,
    /// Any JSON value.
    pub msg: Value,
}

/// One command line, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `pub <topic> <json>`: publish an event, creating the topic if needed.
    Publish {
        /// The topic to publish to.
        topic: String,
        /// The event, as the line gave it.
        event: EventInput,
    },
    /// `sub <topic>`: subscribe to an existing topic.
    Subscribe {
        /// The topic.
        topic: String,
    },
    /// `unsub <topic>`: end a subscription.
    Unsubscribe {
        /// The topic.
        topic: String,
    },
    /// `ack <topic> <id>`: acknowledge one delivered event.
    Ack {
        /// The topic the event came from.
        topic: String,
        /// The event's id.
        id: String,
    },
    /// `name <subscriber-name>`: take a durable identity.
    Name {
        /// The subscriber name.
        name: String,
    },
    /// `window <n>`: how many deliveries may await an ack at once.
    Window {
        /// Deliveries that may await an ack at once.
        size: usize,
    },
    /// `topics`: list the topics.
    Topics,
    /// `stats [topic]`: per-topic counters as JSON.
    Stats {
        /// Only this topic's counters; all topics' when absent.
        topic: Option<String>,
    },
    /// `auth <token>`: present the shared secret.
    Auth {
        /// The token presented.
        token: String,
    },
    /// `help`: one line listing the commands.
    Help,
    /// `quit`: close the connection.
    Quit,
}

/// The reply to `help`.
pub const HELP: &str = "ok commands: pub <topic> <json> | sub <topic> | unsub <topic> | ack <topic> <id> | \
name <subscriber-name> | window <n> | topics | stats [topic] | auth <token> | help | quit; \
events are {\"id\": string, \"priority\": 0-9, \"msg\": any}; deliveries arrive as: event <topic> <json>";

/// Parses one line (without its `\n`; a trailing `\r` is ignored).
/// The error text is what follows `error: ` in the reply.
pub fn parse_command(line: &[u8]) -> Result<Command, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| "the line is not valid UTF-8".to_string())?;
    let line = line.trim();
    if line.is_empty() {
        return Err("empty line; type help for the commands".into());
    }
    let (word, rest) = split_word(line);
    match word.to_ascii_lowercase().as_str() {
        "pub" => {
            let (topic, json) = split_word(rest);
            if topic.is_empty() || json.is_empty() {
                return Err("usage: pub <topic> <json>".into());
            }
            check_name("topic", topic)?;
            Ok(Command::Publish { topic: topic.to_string(), event: parse_event(json)? })
        }
        "sub" => Ok(Command::Subscribe { topic: one_name("sub <topic>", "topic", rest)? }),
        "unsub" => Ok(Command::Unsubscribe { topic: one_name("unsub <topic>", "topic", rest)? }),
        "ack" => {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let [topic, id] = words[..] else { return Err("usage: ack <topic> <id>".into()) };
            check_name("topic", topic)?;
            Ok(Command::Ack { topic: topic.to_string(), id: id.to_string() })
        }
        "name" => Ok(Command::Name { name: one_name("name <subscriber-name>", "subscriber name", rest)? }),
        "window" => {
            let size = no_more_words("window <n>", rest)?
                .parse::<usize>()
                .ok()
                .filter(|size| (1..=MAX_WINDOW).contains(size))
                .ok_or_else(|| format!("window must be a whole number from 1 to {MAX_WINDOW}"))?;
            Ok(Command::Window { size })
        }
        "topics" => no_arguments("topics", rest).map(|_| Command::Topics),
        "stats" => {
            if rest.is_empty() {
                Ok(Command::Stats { topic: None })
            } else {
                Ok(Command::Stats { topic: Some(one_name("stats [topic]", "topic", rest)?) })
            }
        }
        "auth" => Ok(Command::Auth { token: no_more_words("auth <token>", rest)?.to_string() }),
        "help" => no_arguments("help", rest).map(|_| Command::Help),
        "quit" | "exit" => no_arguments("quit", rest).map(|_| Command::Quit),
        _ => Err(format!("unknown command '{}'; type help for the commands", shorten(word))),
    }
}

/// Parses and checks an event's JSON; errors name the field at fault.
pub fn parse_event(json: &str) -> Result<EventInput, String> {
    let value: Value =
        serde_json::from_str(json).map_err(|error| format!("the event is not valid JSON: {error}"))?;
    let Value::Object(mut fields) = value else {
        return Err("the event must be a JSON object {\"id\": ..., \"priority\": 0-9, \"msg\": ...}".into());
    };
    if let Some(unknown) = fields.keys().find(|key| !["id", "priority", "msg"].contains(&key.as_str())) {
        return Err(format!(
            "unknown field '{}' in the event (fields are id, priority, msg)",
            shorten(unknown)
        ));
    }
    let id = match fields.remove("id") {
        Some(Value::String(id)) => id,
        Some(_) => return Err("field 'id' must be a string".into()),
        None => return Err("field 'id' is missing".into()),
    };
    check_id(&id)?;
    let priority = match fields.remove("priority") {
        Some(Value::Number(number)) => number
            .as_u64()
            .filter(|p| *p <= u64::from(MAX_PRIORITY))
            .ok_or_else(|| format!("field 'priority' must be a whole number from 0 to {MAX_PRIORITY}"))?,
        Some(_) => return Err(format!("field 'priority' must be a whole number from 0 to {MAX_PRIORITY}")),
        None => return Err("field 'priority' is missing".into()),
    };
    let msg = fields.remove("msg").ok_or("field 'msg' is missing")?;
    Ok(EventInput { id, priority: priority as u8, msg })
}

/// Checks an event id: 1 to 256 bytes, no whitespace or control characters (so `ack` can name it).
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("field 'id' must be 1 to {MAX_ID_LEN} bytes long"));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("field 'id' must not contain spaces or control characters".into());
    }
    Ok(())
}

/// Checks a topic or subscriber name: 1 to 64 of `A-Z a-z 0-9 _ - .`, not starting with `.`
/// (names become directory names in the data dir).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let valid_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if name.is_empty() || name.len() > MAX_NAME_LEN || !valid_chars || name.starts_with('.') {
        return Err(format!(
            "bad {what} '{}': use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ - . (not starting with .)",
            shorten(name)
        ));
    }
    Ok(())
}

/// The first whitespace-separated word and the trimmed rest.
fn split_word(text: &str) -> (&str, &str) {
    match text.find(char::is_whitespace) {
        Some(end) => (&text[..end], text[end..].trim_start()),
        None => (text, ""),
    }
}

fn no_more_words<'a>(usage: &str, rest: &'a str) -> Result<&'a str, String> {
    let (word, more) = split_word(rest);
    if word.is_empty() || !more.is_empty() {
        return Err(format!("usage: {usage}"));
    }
    Ok(word)
}

fn one_name(usage: &str, what: &str, rest: &str) -> Result<String, String> {
    let name = no_more_words(usage, rest)?;
    check_name(what, name)?;
    Ok(name.to_string())
}

fn no_arguments(command: &str, rest: &str) -> Result<(), String> {
    if rest.is_empty() { Ok(()) } else { Err(format!("{command} takes no arguments")) }
}

/// Cuts outside text quoted in an error to a readable length, on one line
/// (control characters become `?`): for the broker's replies and any other
/// parser's errors (CSV rows).
pub fn shorten(text: &str) -> String {
    const LIMIT: usize = 40;
    let cut: String = text.chars().take(LIMIT).map(|c| if c.is_control() { '?' } else { c }).collect();
    if text.chars().count() > LIMIT { format!("{cut}...") } else { cut }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn parses_every_command() {
        let publish = parse_command(br#"pub news {"id":"a1","priority":7,"msg":{"x":1}}"#).unwrap();
        assert_eq!(
            publish,
            Command::Publish {
                topic: "news".into(),
                event: EventInput { id: "a1".into(), priority: 7, msg: json!({"x": 1}) }
            }
        );
        assert_eq!(parse_command(b"sub news\r").unwrap(), Command::Subscribe { topic: "news".into() });
        assert_eq!(parse_command(b"UNSUB news").unwrap(), Command::Unsubscribe { topic: "news".into() });
        assert_eq!(
            parse_command(b"ack news a1").unwrap(),
            Command::Ack { topic: "news".into(), id: "a1".into() }
        );
        assert_eq!(parse_command(b"name worker-1").unwrap(), Command::Name { name: "worker-1".into() });
        assert_eq!(parse_command(b"window 3").unwrap(), Command::Window { size: 3 });
        assert_eq!(parse_command(b"topics").unwrap(), Command::Topics);
        assert_eq!(parse_command(b"stats").unwrap(), Command::Stats { topic: None });
        assert_eq!(parse_command(b"stats news").unwrap(), Command::Stats { topic: Some("news".into()) });
        assert_eq!(parse_command(b"auth s3cret").unwrap(), Command::Auth { token: "s3cret".into() });
        assert_eq!(parse_command(b"  help  ").unwrap(), Command::Help);
        assert_eq!(parse_command(b"quit\r").unwrap(), Command::Quit);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let error = |line: &[u8]| parse_command(line).unwrap_err();
        assert!(error(b"").starts_with("empty line"));
        assert!(error(b"frobnicate x").contains("unknown command 'frobnicate'"));
        assert!(error(b"pub news").contains("usage: pub"));
        assert!(error(b"pub news {oops").contains("not valid JSON"));
        assert!(error(b"pub news [1]").contains("JSON object"));
        assert!(error(br#"pub news {"priority":1,"msg":1}"#).contains("'id' is missing"));
        assert!(error(br#"pub news {"id":5,"priority":1,"msg":1}"#).contains("'id' must be a string"));
        assert!(error(br#"pub news {"id":"a b","priority":1,"msg":1}"#).contains("spaces"));
        assert!(error(br#"pub news {"id":"a","msg":1}"#).contains("'priority' is missing"));
        assert!(error(br#"pub news {"id":"a","priority":10,"msg":1}"#).contains("0 to 9"));
        assert!(error(br#"pub news {"id":"a","priority":-1,"msg":1}"#).contains("0 to 9"));
        assert!(error(br#"pub news {"id":"a","priority":1.5,"msg":1}"#).contains("0 to 9"));
        assert!(error(br#"pub news {"id":"a","priority":1}"#).contains("'msg' is missing"));
        assert!(error(br#"pub news {"id":"a","priority":1,"msg":1,"x":2}"#).contains("unknown field 'x'"));
        assert!(error(b"pub ../etc {}").contains("bad topic"));
        assert!(error(b"sub").contains("usage: sub"));
        assert!(error(b"sub a b").contains("usage: sub"));
        assert!(error(b"ack news").contains("usage: ack"));
        assert!(error(b"window 0").contains("1 to 10000"));
        assert!(error(b"window lots").contains("1 to 10000"));
        assert!(error(b"topics now").contains("no arguments"));
        assert!(error(b"name .hidden").contains("bad subscriber name"));
        assert!(error(&[0xff, 0xfe, b'\n']).contains("UTF-8"));
    }

    #[test]
    fn long_input_is_shortened_in_errors() {
        let line = format!("{} x", "z".repeat(10_000));
        let error = parse_command(line.as_bytes()).unwrap_err();
        assert!(error.len() < 200, "{error}");
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_give_a_one_line_error(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            match parse_command(&bytes) {
                Ok(_) => {}
                Err(error) => {
                    prop_assert!(!error.is_empty());
                    prop_assert!(!error.contains('\n'), "multi-line error: {error:?}");
                }
            }
        }

        #[test]
        fn command_like_lines_parse_or_give_a_one_line_error(
            word in prop::sample::select(vec!["pub", "sub", "unsub", "ack", "name", "window", "stats", "auth", "topics"]),
            rest in "[ -~\t\r\u{80}-\u{10ffff}]{0,80}",
        ) {
            let line = format!("{word} {rest}");
            if let Err(error) = parse_command(line.as_bytes()) {
                prop_assert!(!error.contains('\n'), "multi-line error: {error:?}");
            }
        }

        #[test]
        fn valid_events_round_trip(id in "[a-zA-Z0-9_-]{1,20}", priority in 0u8..=9, n in any::<i64>()) {
            let line = format!(r#"pub t {{"id":"{id}","priority":{priority},"msg":{n}}}"#);
            let parsed = parse_command(line.as_bytes()).unwrap();
            prop_assert_eq!(parsed, Command::Publish {
                topic: "t".into(),
                event: EventInput { id, priority, msg: json!(n) },
            });
        }
    }
}
