"""The `smolite` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _convert(args: argparse.Namespace) -> int:
    from .convert_smolite_keras_to_hf import convert_keras_to_hf

    output_dir = convert_keras_to_hf(
        args.keras_weights,
        args.output_dir,
        tokenizer=args.tokenizer,
        overwrite=args.overwrite,
        max_position_embeddings=args.max_position_embeddings,
    )
    print(f"Converted {args.keras_weights} -> {output_dir} (logits checked against the Keras forward pass).")
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from .data import read_texts
    from .tokenization_smolite import SmoliteTokenizer

    output_dir = Path(args.output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not args.overwrite:
        raise ValueError(f"{output_dir}: the output folder exists and is not empty; pass --overwrite to replace it.")
    texts = list(read_texts(args.data, skip_bad_lines=args.skip_bad_lines))
    tokenizer = SmoliteTokenizer.train(texts, vocab_size=args.vocab_size, model_max_length=args.model_max_length)
    tokenizer.save_pretrained(output_dir)
    print(f"Trained a {len(tokenizer)}-piece tokenizer on {len(texts)} texts -> {output_dir}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .training import train

    result = train(
        args.output_dir,
        args.data,
        eval_data=args.eval_data,
        eval_fraction=args.eval_fraction,
        size=args.size,
        config_file=args.config,
        from_pretrained=args.from_pretrained,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        max_length=args.max_length,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        epochs=args.epochs,
        max_steps=args.max_steps,
        eval_steps=args.eval_steps,
        save_steps=args.save_steps,
        logging_steps=args.logging_steps,
        seed=args.seed,
        bf16=args.bf16,
        resume=args.resume,
        overwrite=args.overwrite,
        lora=args.lora,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_target_modules=tuple(args.lora_target_modules.split(",")),
        gradient_checkpointing=args.gradient_checkpointing,
        skip_bad_lines=args.skip_bad_lines,
        allow_pickle=args.allow_pickle,
    )
    train_report = result.data_report["train"]
    print(f"Trained on {train_report['used']} examples in {result.train_seconds:.0f} s -> {result.output_dir}")
    for name, value in result.metrics.items():
        if name.startswith("eval_") and isinstance(value, float):
            print(f"  {name[5:]:20s} {value:.4f}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from .evaluation import evaluate_model

    metrics, report = evaluate_model(args.model_dir, args.data, batch_size=args.batch_size,
                                     skip_bad_lines=args.skip_bad_lines, allow_pickle=args.allow_pickle)
    if args.json:
        print(json.dumps({"metrics": metrics, "data": report.as_dict()}, ensure_ascii=False))
    else:
        print(f"{args.model_dir} on {', '.join(args.data)}: {report}")
        for name in ("loss", "masked_accuracy", "masked_perplexity", "perplexity", "targets"):
            print(f"  {name:20s} {metrics[name]:.4f}" if isinstance(metrics[name], float) else f"  {name:20s} {metrics[name]}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from .chat import chat
    from .generation import PRESETS

    overrides = dict(PRESETS[args.preset]) if args.preset else {}
    if args.greedy:
        overrides.update(do_sample=False, temperature=1.0, top_p=1.0, top_k=50)  # neutral: no sampling warnings
    for name in ("temperature", "top_p", "max_new_tokens"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return chat(args.model_dir, prompt=args.prompt, seed=args.seed, device=args.device, dtype=args.dtype,
                allow_pickle=args.allow_pickle, **overrides)


def _serve(args: argparse.Namespace) -> int:
    from .serving import main

    return main(args)


def _push(args: argparse.Namespace) -> int:
    from .hub import push_model

    repo_id = push_model(args.model_dir, args.repo_id, private=args.private, token=args.token, license=args.license)
    print(f"Uploaded {args.model_dir} to https://huggingface.co/{repo_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smolite", description="Smolite for the Hugging Face stack.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="convert original Keras weights into a Hugging Face model folder",
        description="Convert original Smolite Keras weights (*.weights.h5) into a folder that "
        "AutoModelForCausalLM.from_pretrained loads. Sizes are read from the weight shapes.",
    )
    convert.add_argument("--keras-weights", required=True, metavar="FILE", help="the Keras *.weights.h5 file")
    convert.add_argument("--output-dir", required=True, metavar="DIR", help="the folder to write")
    convert.add_argument(
        "--tokenizer", metavar="FILE", help="the original SentencePiece *.model, added to DIR (needs protobuf)"
    )
    convert.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")
    convert.add_argument(
        "--max-position-embeddings",
        type=int,
        default=100,
        metavar="N",
        help="the window the model was trained on (not visible in the weights; 100 for every released size)",
    )
    convert.set_defaults(run=_convert)

    train_tokenizer = commands.add_parser(
        "train-tokenizer",
        help="train a Smolite (Unigram) tokenizer on text or conversation files",
        description="Train a SentencePiece-style Unigram tokenizer with Smolite's normalisation and special pieces "
        "(<pad> 0, <unk> 1, <start> 2, <sep> 3, <end> 4). Conversation files (.jsonl, ShareGPT or messages format) "
        "contribute every message; other files every non-blank line.",
    )
    train_tokenizer.add_argument("--data", nargs="+", required=True, metavar="FILE")
    train_tokenizer.add_argument("--vocab-size", type=int, required=True, metavar="N")
    train_tokenizer.add_argument("--output-dir", required=True, metavar="DIR")
    train_tokenizer.add_argument("--model-max-length", type=int, default=100, metavar="N")
    train_tokenizer.add_argument("--skip-bad-lines", action="store_true", help="count and skip malformed lines")
    train_tokenizer.add_argument("--overwrite", action="store_true")
    train_tokenizer.set_defaults(run=_train_tokenizer)

    train = commands.add_parser(
        "train",
        help="train or fine-tune Smolite with the Trainer (the built-in Korean conversations by default)",
        description="Train Smolite from scratch (a --size preset or a --config file; a tokenizer is trained on the "
        "data unless --tokenizer is given) or fine-tune it (--from-pretrained) on conversation files. The seed's "
        "recipe is the default: Adam lr 1e-4, betas 0.9/0.95, eps 1e-8, grad-norm clip 1.0, batch 64, one epoch, "
        "label smoothing 0.1 in the model's loss.",
    )
    train.add_argument("--data", nargs="+", metavar="FILE", help="conversation files (default: the built-in dataset)")
    train.add_argument("--eval-data", nargs="+", metavar="FILE", help="evaluation files (default: hold out --eval-fraction)")
    train.add_argument("--eval-fraction", type=float, default=0.1, metavar="F")
    train.add_argument("--output-dir", required=True, metavar="DIR")
    train.add_argument("--size", default="seed", choices=["seed", "small", "tiny"], help="model size from scratch")
    train.add_argument("--config", metavar="FILE", help="a JSON file of SmoliteConfig fields (instead of --size)")
    train.add_argument("--from-pretrained", metavar="DIR", help="fine-tune this model folder")
    train.add_argument("--tokenizer", metavar="DIR_OR_MODEL", help="a tokenizer folder or an original .model")
    train.add_argument("--vocab-size", type=int, default=1500, help="pieces of a tokenizer trained on the data")
    train.add_argument("--max-length", type=int, metavar="N", help="the window for a model from scratch (default 100)")
    train.add_argument("--learning-rate", type=float, default=1e-4)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--gradient-accumulation-steps", type=int, default=1)
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--max-steps", type=int, default=-1)
    train.add_argument("--eval-steps", type=int)
    train.add_argument("--save-steps", type=int)
    train.add_argument("--logging-steps", type=int, default=10)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPUs with AMX/AVX512-BF16, or GPUs)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in DIR")
    train.add_argument("--overwrite", action="store_true", help="start again in a DIR that holds an earlier run")
    train.add_argument("--skip-bad-lines", action="store_true", help="count and skip malformed lines")
    train.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    lora = train.add_argument_group("LoRA (PEFT): train adapters on --from-pretrained instead of all weights")
    lora.add_argument("--lora", action="store_true", help="train LoRA adapters only (needs the peft package)")
    lora.add_argument("--lora-r", type=int, default=8, help="adapter rank (default 8)")
    lora.add_argument("--lora-alpha", type=int, default=16, help="adapter scale numerator (default 16)")
    lora.add_argument("--lora-dropout", type=float, default=0.05)
    lora.add_argument("--lora-target-modules", default="q_proj,k_proj,v_proj,o_proj",
                      help="comma-separated module names (default: the attention projections; also gate_proj, "
                      "up_proj, down_proj, adapter.down, adapter.up)")
    train.add_argument("--allow-pickle", action="store_true",
                        help="load pytorch_model.bin (pickle) weights; only for files you trust")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="report loss, masked accuracy and perplexities on conversation files")
    evaluate.add_argument("model_dir", metavar="MODEL_DIR")
    evaluate.add_argument("--data", nargs="+", required=True, metavar="FILE")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--skip-bad-lines", action="store_true")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--allow-pickle", action="store_true",
                        help="load pytorch_model.bin (pickle) weights; only for files you trust")
    evaluate.set_defaults(run=_evaluate)

    chat = commands.add_parser(
        "chat",
        help="chat with a model folder in the terminal (streamed replies)",
        description="Chat with a Smolite folder; replies stream as they are generated. The folder's "
        "generation_config.json (the seed's chat decoding: temperature 0.5, top-p 0.9, repetition penalty 1.1) is the "
        "default. Type 'quit' or press Ctrl-C to leave.",
    )
    chat.add_argument("model_dir", metavar="MODEL_DIR")
    chat.add_argument("--prompt", metavar="TEXT", help="answer this one message and exit")
    chat.add_argument("--preset", choices=["chat", "original"], help="the original's decoding variants")
    chat.add_argument("--temperature", type=float)
    chat.add_argument("--top-p", type=float)
    chat.add_argument("--greedy", action="store_true", help="always the most likely token")
    chat.add_argument("--max-new-tokens", type=int)
    chat.add_argument("--seed", type=int, help="make sampling reproducible")
    chat.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    chat.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    chat.add_argument("--allow-pickle", action="store_true",
                        help="load pytorch_model.bin (pickle) weights; only for files you trust")
    chat.set_defaults(run=_chat)

    serve = commands.add_parser(
        "serve",
        help="serve a model folder: an OpenAI-compatible chat API, the original streaming API and a chat page",
        description="Load MODEL_DIR once and serve POST /v1/chat/completions and GET /v1/models (OpenAI's API), "
        "GET and POST /api/chat (the original Server-Sent Events protocol), GET / (a chat page), GET /health and "
        "GET /metrics, decoding concurrent requests together. Binds to 127.0.0.1 unless --host says otherwise.",
    )
    serve.add_argument("model_dir", metavar="MODEL_DIR")
    from .serving import add_arguments as add_serve_arguments  # the serve-only options live with the server

    add_serve_arguments(serve)
    serve.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    serve.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    serve.add_argument("--allow-pickle", action="store_true",
                        help="load pytorch_model.bin (pickle) weights; only for files you trust")
    serve.set_defaults(run=_serve)

    push = commands.add_parser(
        "push",
        help="upload a model folder to the Hugging Face Hub with a generated model card",
        description="Upload MODEL_DIR (model, tokenizer, source files for trust_remote_code, and a generated model "
        "card) to a Hub repository in one commit. The local folder is only read.",
    )
    push.add_argument("model_dir", metavar="MODEL_DIR")
    push.add_argument("--repo-id", required=True, metavar="NAME", help="user/name or org/name")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", help="a Hub token with write access (default: the logged-in one or HF_TOKEN)")
    push.add_argument("--license", default="apache-2.0", help="the license in the model card (default apache-2.0)")
    push.set_defaults(run=_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as err:
        print(f"smolite {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smolite {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
