import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run far faster on one thread; on a busy machine OpenMP threads thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


WORDS = (
    "q a : ? . , the what is capital of who head coach club leads plays for "
    "france paris rome italy spain madrid berlin germany bern switzerland lima peru "
    "oslo norway quito ecuador cairo egypt dublin ireland vienna austria athens greece "
    "tokyo japan kenya nairobi chile santiago cuba havana nepal kathmandu iran tehran "
    "fiji suva mali bamako laos vientiane oman muscat chad ndjamena "
    "alice bob carol dave erin frank grace heidi ivan judy mallory niaj "
    "red blue green gold black white pink grey jade teal one two three four five six "
    "seven eight nine ten"
)


@pytest.fixture
def tiny_lm():
    """A tiny Llama over the words of the tests' facts."""
    from lucidml.testing import tiny_llama, word_tokenizer

    words = WORDS.split()
    tok = word_tokenizer(words, max_length=128)
    return tiny_llama(tokenizer=tok, hidden_size=32, num_layers=3, num_heads=4)
