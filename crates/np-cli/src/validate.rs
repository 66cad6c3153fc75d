//! `config-validate`: checks the main configuration file (never the secure
//! file, as upstream) and reports as upstream's validator does: log records on
//! stderr (`<time> INFO nodepool.cmd.config_validator: validating <path>`, then
//! one `ERROR` record per problem), nothing on stdout, exit 0 or 1.
//!
//! The checks are np-config's, which reports every problem it finds with its
//! file position, where upstream stops at the first schema error.

use std::path::Path;

const LOGGER: &str = "nodepool.cmd.config_validator";

/// Validates `path`; returns the exit code.
pub fn run(path: &Path) -> u8 {
    log("INFO", &format!("validating {}", path.display()));
    match np_config::validate_file(path, None) {
        Ok(_) => 0,
        Err(errors) => {
            for e in errors.errors() {
                log("ERROR", &e.to_string());
            }
            if errors.is_empty() {
                log("ERROR", "configuration is invalid");
            }
            1
        }
    }
}

fn log(level: &str, message: &str) {
    let stamp = timestamp();
    for line in message.lines() {
        eprintln!("{stamp} {level} {LOGGER}: {line}");
    }
}

/// Python logging's default `asctime` (`YYYY-MM-DD HH:MM:SS,mmm`), in UTC.
fn timestamp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02},{:03}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
