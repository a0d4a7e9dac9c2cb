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
    let line = template
        .replace("{image}", &quote(&image.display().to_string()))
        .replace("{log}", &quote(&log.display().to_string()));
    let mut command = Command::new("sh");
    command.arg("-c").arg(&line).current_dir(dir);
    Ok(Launch {
        command,
        log,
        describe: format!("sh -c {}", quote(template)),
    })
}
