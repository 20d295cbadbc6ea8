//! Errors in one line for people: the message, then each cause once.
//!
//! Many of the project's errors name their cause in their own message
//! (`input file clip.mp4: No such file or directory (os error 2)`) and
//! also give it as their source, so a chain printed whole (`{:#}`) said the
//! cause twice. [`one_line`] leaves out a cause whose text is already there.

use std::error::Error;

/// `e` and its causes, `: `-separated; a cause whose text the line already
/// holds is left out.
pub fn one_line(e: &(dyn Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn a_cause_named_in_the_message_is_said_once() {
        let missing = std::fs::File::open("/nonexistent/clip.mp4").unwrap_err();
        let e = crate::capture::CaptureError::Open { path: "/nonexistent/clip.mp4".into(), source: missing };
        let line = one_line(&e);
        assert_eq!(line.matches("No such file or directory").count(), 1, "{line}");
        // `{:#}` says it twice: what this is for.
        let whole = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(whole.matches("No such file or directory").count(), 2, "{whole}");
    }

    #[test]
    fn causes_not_in_the_message_are_kept_in_order() {
        let e = Err::<(), _>(std::io::Error::other("disk full"))
            .context("writing seg-7.m4s")
            .context("channel main stopped")
            .unwrap_err();
        assert_eq!(one_line(&*e), "channel main stopped: writing seg-7.m4s: disk full");
    }
}
