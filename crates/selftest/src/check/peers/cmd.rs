//! `--vmm-cmd 'CMD {image} {log}'`: any VMM, started by `sh -c` with `{image}` replaced by the
//! path of the probe image (a 64 KiB flat firmware ending at 4 GiB) and `{log}` by the file its
//! port 0xE9 (or COM1) output must go to. The command may exit when the probe writes port 0xF4;
//! if it does not, it is killed once the log is complete.

use std::path::Path;
use std::process::Command;

use super::{Launch, PeerError};

/// Quotes `s` for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `template` with every placeholder of `values` replaced, in one pass from left to right: a
/// value is never searched for placeholders again (a temp dir named `{log}x` stays a path).
fn substitute(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    'scan: while !rest.is_empty() {
        for (key, value) in values {
            if let Some(after) = rest.strip_prefix(key) {
                out.push_str(value);
                rest = after;
                continue 'scan;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// The `sh -c` command for `template`, which must name `{image}` and `{log}`.
pub fn launch(template: &str, dir: &Path, image: &Path) -> Result<Launch, PeerError> {
    for key in ["{image}", "{log}"] {
        if !template.contains(key) {
            return Err(PeerError::Template {
                template: template.to_string(),
                why: format!(
                    "it must contain {key} (e.g. 'my-vmm --firmware {{image}} --debugcon {{log}}')"
                ),
            });
        }
    }
    let log = dir.join("vmm.log");
    let line = substitute(
        template,
        &[
            ("{image}", &quote(&image.display().to_string())),
            ("{log}", &quote(&log.display().to_string())),
        ],
    );
    let mut command = Command::new("sh");
    command.arg("-c").arg(&line).current_dir(dir);
    Ok(Launch {
        command,
        log,
        describe: format!("sh -c {}", quote(template)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_inside_a_substituted_path_stay_as_they_are() {
        let line = substitute(
            "vmm {image} --log {log} {image}",
            &[
                ("{image}", "'/t/{log}x;touch F;y/p.rom'"),
                ("{log}", "'/t/v.log'"),
            ],
        );
        assert_eq!(
            line,
            "vmm '/t/{log}x;touch F;y/p.rom' --log '/t/v.log' '/t/{log}x;touch F;y/p.rom'"
        );
    }
}
