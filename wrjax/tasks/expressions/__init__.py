"""The arithmetic-expression task (paper §6.2, appendix C.5): data, objective, grammar VAE.

Data: the 100,000 univariate expressions of Kusner et al. (2017) generated from

    S -> S '+' T | S '*' T | S '/' T | T
    T -> '(' S ')' | 'sin(' S ')' | 'exp(' S ')' | 'x' | '1' | '2' | '3'

with at most 15 production rules; as in the paper, only the worst 50% by score are kept
(50,111 because of ties). Objective (maximised): ``-min(7, log(1 + MSE))`` against the target
``1/3 + x + sin(x*x)`` on 1,000 evenly spaced points in [-10, 10]. Model: the grammar VAE of
Kusner et al. (conv encoder, 3-layer GRU decoder, latent 25, grammar-masked softmax).

Modules: :mod:`.grammar` (the CFG machinery and the expression grammar), :mod:`.data`,
:mod:`.objective`, :mod:`.model` (the VAE and decoding), :mod:`.pretrain` (the authors'
pretraining and the ``expressions`` subcommand of ``experiments/pretrain.py``), :mod:`.task`
(:func:`make_expressions_task`). The public names of all but :mod:`.pretrain` are re-exported
here (``from wrjax.tasks.expressions import pretrain`` is the module).
"""

from wrjax.tasks.expressions import grammar
from wrjax.tasks.expressions.data import (ExpressionData, find_data_dir, load_expressions,
                                          novelty_key, parsed_rules)
from wrjax.tasks.expressions.grammar import (GRAMMAR, MAX_LEN, NUM_RULES, TABLES,
                                             expressions_to_one_hot, parse_rules,
                                             rules_to_expression, tokenize)
from wrjax.tasks.expressions.model import (LATENT_DIM, LATENT_NOISE_STD, GrammarVAE, build_model,
                                           decode_expressions, decode_rules, init_params,
                                           log_likelihood, majority_vote,
                                           make_expressions_train_step, model_config,
                                           reconstruction_accuracy)
from wrjax.tasks.expressions.objective import (DEFAULT_TARGET, PAPER_TEXT_TARGET, WORST_LOG_MSE,
                                               evaluate, score, score_batch)
from wrjax.tasks.expressions.task import CHECKPOINT_PREFIX, make_expressions_task

__all__ = [
    "grammar", "GRAMMAR", "TABLES", "MAX_LEN", "NUM_RULES", "LATENT_DIM", "LATENT_NOISE_STD",
    "DEFAULT_TARGET", "PAPER_TEXT_TARGET", "WORST_LOG_MSE", "CHECKPOINT_PREFIX", "tokenize",
    "parse_rules", "expressions_to_one_hot", "rules_to_expression", "ExpressionData",
    "find_data_dir", "load_expressions", "parsed_rules", "novelty_key", "evaluate", "score",
    "score_batch", "GrammarVAE", "log_likelihood", "make_expressions_train_step", "init_params",
    "model_config", "build_model", "majority_vote", "decode_rules", "decode_expressions",
    "reconstruction_accuracy", "make_expressions_task",
]  # fmt: skip
