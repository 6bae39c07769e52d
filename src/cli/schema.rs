//! `canaryd schema`: prints the rollout JSON Schema, or writes every schema into a folder.

use std::fs;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::emit;

#[derive(Args)]
pub struct SchemaArgs {
    /// Write them into this folder instead of printing the rollout schema.
    #[arg(long)]
    write: Option<PathBuf>,
}

pub fn run(args: SchemaArgs) -> Result<u8> {
    let all = canaryd::schema::all();
    match &args.write {
        Some(dir) => {
            fs::create_dir_all(dir)?;
            for (name, text) in all {
                fs::write(dir.join(name), text)?;
            }
        }
        None => emit(&all[0].1)?,
    }
    Ok(0)
}
