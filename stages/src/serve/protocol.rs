//! The line protocol of `stageflow serve`: parsing one command line and the
//! fixed texts the server sends. Pure functions, no I/O.

/// One command line, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `twitter`: start (or join) the shared tweet pipeline and watch its logger.
    Twitter,
    /// `stop`: stop watching.
    Stop,
    /// `stats`: the running pipeline's statistics.
    Stats,
    /// `help`: one line listing the commands.
    Help,
    /// `quit`: close the connection.
    Quit,
}

/// The first line a new connection gets.
pub const GREETING: &str = "stageflow serve: type twitter to watch live tweets, help for the commands";

/// The reply to `help`.
pub const HELP: &str = "ok commands: twitter (watch the live tweet pipeline: one `tweet: <text>` line per tweet) | \
stop (stop watching) | stats (the running pipeline's numbers) | help | quit";

/// The prefix of every tweet line.
pub const TWEET_PREFIX: &str = "tweet: ";

/// The line that stands for `count` tweets a slow reader lost.
pub fn skipped_line(count: u64) -> String {
    format!("[skipped {count} {}]", if count == 1 { "tweet" } else { "tweets" })
}

/// Parses one line (without its `\n`; a trailing `\r` is ignored). Words are
/// case-insensitive. The error is what follows `error: ` in the reply.
pub fn parse_command(line: &[u8]) -> Result<Command, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line =
        std::str::from_utf8(line).map_err(|_| "the line is not valid UTF-8; type help for the commands")?;
    // Telnet clients may send option negotiation (IAC, 0xFF) or other control bytes: ignore them.
    let line: String = line.chars().filter(|c| !c.is_control()).collect();
    let mut words = line.split_whitespace();
    let Some(word) = words.next() else {
        return Err("empty line; type help for the commands".into());
    };
    let command = match word.to_ascii_lowercase().as_str() {
        "twitter" => Command::Twitter,
        "stop" => Command::Stop,
        "stats" => Command::Stats,
        "help" | "?" => Command::Help,
        "quit" | "exit" => Command::Quit,
        _ => return Err(format!("unknown command '{}'; type help for the commands", shorten(word))),
    };
    if words.next().is_some() {
        return Err(format!(
            "`{}` takes no arguments; type help for the commands",
            word.to_ascii_lowercase()
        ));
    }
    Ok(command)
}

/// At most 40 characters of what a client sent, for error messages.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_words_in_any_case_with_optional_cr() {
        assert_eq!(parse_command(b"twitter"), Ok(Command::Twitter));
        assert_eq!(parse_command(b"  TWITTER \r"), Ok(Command::Twitter));
        assert_eq!(parse_command(b"stop"), Ok(Command::Stop));
        assert_eq!(parse_command(b"Stats"), Ok(Command::Stats));
        assert_eq!(parse_command(b"help"), Ok(Command::Help));
        assert_eq!(parse_command(b"?"), Ok(Command::Help));
        assert_eq!(parse_command(b"quit"), Ok(Command::Quit));
        assert_eq!(parse_command(b"exit"), Ok(Command::Quit));
    }

    #[test]
    fn unknown_commands_get_a_help_hint() {
        let error = parse_command(b"twiter").unwrap_err();
        assert_eq!(error, "unknown command 'twiter'; type help for the commands");
        let long = "x".repeat(100);
        let error = parse_command(long.as_bytes()).unwrap_err();
        assert!(error.contains(&format!("'{}…'", "x".repeat(40))), "{error}");
        assert!(parse_command("café".as_bytes()).unwrap_err().contains("'café'"));
    }

    #[test]
    fn empty_lines_extra_words_and_bad_bytes_are_errors() {
        assert!(parse_command(b"").unwrap_err().contains("empty line"));
        assert!(parse_command(b"   \r").unwrap_err().contains("empty line"));
        assert!(parse_command(b"stop now").unwrap_err().contains("`stop` takes no arguments"));
        assert!(parse_command(b"\xff\xfe twitter").unwrap_err().contains("not valid UTF-8"));
        assert!(parse_command(b"tw\x00itter").is_ok(), "control bytes are ignored");
    }

    #[test]
    fn the_skipped_line_counts_tweets() {
        assert_eq!(skipped_line(1), "[skipped 1 tweet]");
        assert_eq!(skipped_line(42), "[skipped 42 tweets]");
    }
}
