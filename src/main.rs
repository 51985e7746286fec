//! The `shardquant` command. Parsing is clap's; everything else lives in the library.

use clap::Parser;
use shardquant::cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Convert(args) => args.plan.to_options().and_then(|mut o| {
            o.quiet = args.quiet;
            o.force = args.force;
            o.report = args.report.clone();
            shardquant::convert::convert(&args.input_dir, &args.output_dir, &o).map(|_| ())
        }),
        Command::Inspect(args) => args
            .plan
            .to_options()
            .and_then(|o| shardquant::inspect::inspect(&args.dir, &o))
            .map(|text| print!("{text}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardquant: error: {e}");
            ExitCode::from(e.kind().exit_code())
        }
    }
}
