//! The `shardquant` command. Parsing is clap's; everything else lives in the library.

use clap::Parser;
use shardquant::cli::{Cli, Command, StatsCommand};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Convert(args) if args.plan.format.is_none() => Err(shardquant::error::Error::usage(
            "convert needs --format: nvfp4 (W4A4, needs --stats), w4a16_nvfp4 (weights only) or fp8 (W8A8, needs --stats)",
        )),
        Command::Convert(args) => args.plan.to_options().and_then(|mut o| {
            shardquant::interrupt::install();
            o.quiet = args.quiet;
            o.force = args.force;
            o.allow_nonfinite = args.allow_nonfinite;
            o.report = args.report.clone();
            shardquant::convert::convert(&args.input_dir, &args.output_dir, &o).map(|_| ())
        }),
        Command::Stats(StatsCommand::Inspect(args)) => {
            shardquant::stats_cmd::inspect(&args.files, args.model.as_deref(), &args.to_options()).map(|text| print!("{text}"))
        }
        Command::Stats(StatsCommand::Import(args)) => {
            shardquant::stats_cmd::import(&args.files, &args.model, &args.output, &args.to_options()).map(|text| print!("{text}"))
        }
        Command::Verify(args) => shardquant::verify::verify(&args.dir, args.source.as_deref()).and_then(|v| {
            print!("{}", v.report());
            if v.problems.is_empty() {
                Ok(())
            } else {
                Err(shardquant::error::Error::bad_input(format!(
                    "{}: verification found {} problem(s)",
                    args.dir.display(),
                    v.problems.len()
                )))
            }
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
